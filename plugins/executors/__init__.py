"""Built-in executors (registered through the `bench` entry-point group)."""

from harness import hookimpl


@hookimpl
def bench_register_executors(register):  # noqa: ANN001, ANN201
    from plugins.executors.local import LocalExecutor

    register(LocalExecutor)

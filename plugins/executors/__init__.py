"""Built-in executors (registered through the `bench` entry-point group)."""

from harness import hookimpl


@hookimpl
def bench_register_executors(register):  # noqa: ANN001, ANN201
    from plugins.executors.local import LocalExecutor
    from plugins.executors.ray_executor import RayExecutor  # imports Ray only when a run starts

    register(LocalExecutor)
    register(RayExecutor)

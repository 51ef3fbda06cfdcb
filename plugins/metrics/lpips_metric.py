"""``lpips``: LPIPS distance to the reference model's image for the same noise and condition.

Weights: the lpips package ships its calibrated linear layers (``lpips/weights/v0.1``),
but its AlexNet / VGG-16 backbone is torchvision's ImageNet checkpoint, which torchvision
normally downloads. The backbone file (``alexnet-owt-7be5be79.pth`` or
``vgg16-397923af.pth``, a torchvision ``state_dict``, loaded with ``weights_only=True``;
a ``features``-only state dict works too) is looked up, in order:

1. the option ``[metrics.lpips] backbone_weights = "PATH"``;
2. the environment variable ``DIFFBENCH_LPIPS_BACKBONE``;
3. torchvision's cache ``$TORCH_HOME/hub/checkpoints/<file>``;
4. otherwise it is downloaded into (3), unless ``DIFFBENCH_OFFLINE=1`` or
   ``HF_HUB_OFFLINE=1``.

A configured path that does not exist, or a failed/forbidden download, is a one-line
:class:`harness.errors.MissingFileError` naming the file, the option and the variable.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from harness import Metric, MetricContext, MissingFileError
from plugins.metrics._common import check_paired, download_weights, local_weights, memoised

ENV_VAR = "DIFFBENCH_LPIPS_BACKBONE"
BACKBONE_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
}



def _how_to_fix(net: str) -> str:
    url = BACKBONE_URLS[net]
    name = url.rsplit("/", 1)[1]
    return (
        f'set [metrics.lpips] backbone_weights = "/path/to/{name}" or {ENV_VAR}=/path/to/{name} (download: {url})'
    )


def resolve_backbone_weights(net: str, backbone_weights: str | None = None) -> Path:
    """The local torchvision backbone checkpoint: option, env var, torch's cache, else download."""
    import torch

    what = f"lpips: {net} backbone weights file"
    path = local_weights(backbone_weights, "[metrics.lpips] backbone_weights", ENV_VAR, what, lambda: _how_to_fix(net))
    if path is not None:
        return path
    url = BACKBONE_URLS[net]
    target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    if target.is_file():
        return target
    # torchvision's file names carry the SHA-256 prefix after the last '-'
    return download_weights(url, target, what, lambda: _how_to_fix(net), hash_prefix=target.stem.rsplit("-", 1)[1])


def build_lpips(net: str, backbone_path: Path) -> Any:
    """``lpips.LPIPS(net=net)`` with its packaged linear layers and the backbone from ``backbone_path``."""
    import lpips
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated" notice
        # pnet_rand: build the backbone without downloading; its weights are loaded below
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    try:
        state = torch.load(str(backbone_path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MissingFileError(
            f"lpips: cannot read {backbone_path} as a torchvision state dict ({type(exc).__name__}); {_how_to_fix(net)}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")} or dict(state)
    # lpips splits torchvision's `features` Sequential into slices whose children keep
    # their original indices as names: slice2.3.weight is features.3.weight.
    target = {}
    for slice_name, block in model.net.named_children():
        for index, module in block.named_children():
            for param in module.state_dict():
                source = f"{index}.{param}"
                if source not in features:
                    raise MissingFileError(
                        f"lpips: {backbone_path} lacks 'features.{source}', so it is not a torchvision {net} "
                        f"checkpoint; {_how_to_fix(net)}"
                    )
                target[f"{slice_name}.{index}.{param}"] = features[source]
    model.net.load_state_dict(target, strict=True)
    return model.eval()


@dataclass
class LPIPSOptions:
    net: Literal["alex", "vgg"] = field(default="alex", metadata={"help": "backbone: alex | vgg"})
    backbone_weights: str | None = field(
        default=None, metadata={"help": f"local torchvision checkpoint of the backbone; else ${ENV_VAR}, torch's cache"}
    )
    min_size: int = field(default=64, metadata={"help": "smaller images are upsampled (bilinear) to this size"})
    batch_size: int = field(default=64, metadata={"help": "image pairs per forward pass"})


_MODELS: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


def get_lpips(opts: LPIPSOptions, device: Any) -> Any:
    """The LPIPS module for these options on ``device``, loaded once per process."""
    path = resolve_backbone_weights(opts.net, opts.backbone_weights).resolve()
    st = path.stat()
    key = (opts.net, str(path), st.st_mtime, st.st_size, str(device))
    return memoised(_MODELS, _LOCK, key, lambda: build_lpips(opts.net, path).to(device))


class LPIPS(Metric):
    """LPIPS perceptual distance between each sample and the reference model's sample for the same noise.

    lpips = (1/N) sum_i LPIPS(x_i, r_i): x_i the cell's sample i, r_i the reference
    (unpruned / teacher) model's sample for the same initial noise and condition
    (``ctx.reference_samples``); LPIPS v0.1 (``net`` alex | vgg) sums over backbone
    layers the spatial mean of w_l . (phi_l(x) - phi_l(r))^2 of channel-unit-normalised
    activations. Inputs: [0, 1] mapped to [-1, 1], grayscale repeated to 3 channels,
    images smaller than ``min_size`` upsampled bilinearly (AlexNet's pooling needs
    about 32 px; 16 px digits would vanish). 0 for identical images; lower is better.
    """

    name = "lpips"
    higher_is_better = False
    requires: ClassVar[frozenset[str]] = frozenset({"samples", "reference_samples"})
    Options = LPIPSOptions

    @staticmethod
    def prepare(images01: Any, min_size: int) -> Any:
        """[0, 1] N x C x H x W -> [-1, 1] N x 3 x H' x W' (H' = max(H, min_size))."""
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(images01).detach().float().clamp(0, 1)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        h, w = x.shape[-2:]
        if min(h, w) < min_size:
            scale = min_size / min(h, w)
            size = (round(h * scale), round(w * scale))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x * 2 - 1

    def compute(self, ctx: MetricContext) -> float:
        import torch

        opts = self.options or LPIPSOptions()
        check_paired(ctx, self.name)
        model = get_lpips(opts, ctx.device)
        values = []
        for i in range(0, len(ctx.samples), opts.batch_size):
            a = self.prepare(ctx.samples[i : i + opts.batch_size], opts.min_size).to(ctx.device)
            b = self.prepare(ctx.reference_samples[i : i + opts.batch_size], opts.min_size).to(ctx.device)
            with torch.no_grad():
                values.append(model(a, b).reshape(-1).cpu())
        return float(torch.cat(values).mean())

"""Time each of G's SPADEs in its two forms at the official sizes: the PyTorch ops (the gamma/beta
convolution on cuDNN, then the modulation) and the fused Triton kernel (lpperf.optimize.modulation).

Each form is one compiled function from the stream x and the SPADE's hidden map to its activation,
instance-norm statistics included, timed as a CUDA-graph replay (the kernels alone); both forms are
checked against the float64 SPADE. The per-frame sum weighs each SPADE once (G has 18). Needs a CUDA
card with Triton.

    python tools/spade_forms.py --batch 1 16 --out spade_forms.json
"""

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from lpperf import models
from lpperf.measure import timing
from lpperf.models.spade import LEAKY_SLOPE
from lpperf.optimize import kernels, modulation, rewrites

# Replays per form: at least 30, until their IQR is within 2 % of the median (at most 200, or 10 s).
RULE = timing.StoppingRule(min_repeats=30, min_seconds=0.0, max_rel_iqr=0.02, max_repeats=200, max_seconds=10.0)


def spade_uses(decoder: rewrites.BatchedSPADEDecoder, feature_size: int):
    """(name, SpadeModulation, x channels, x size, upsample, slope, hidden size) of every SPADE of G, as the
    decoder's blocks call them with the stages normalising before their upsampling."""
    size = feature_size
    for stage_index, stage in enumerate(decoder.stages):
        size *= stage.upsample
        for block_index, block in enumerate(stage.blocks):
            upsample = stage.upsample if block_index == 0 else 1
            norm_0, norm_1, *norm_s = block.spades
            stream_channels = norm_0.gamma_beta.out_channels // 2
            prefix = f"stages.{stage_index}.blocks.{block_index}"
            yield f"{prefix}.norm_0", norm_0, stream_channels, size // upsample, upsample, LEAKY_SLOPE, size
            yield f"{prefix}.norm_1", norm_1, norm_1.gamma_beta.out_channels // 2, size, 1, LEAKY_SLOPE, size
            for spade in norm_s:
                yield f"{prefix}.norm_s", spade, stream_channels, size // upsample, upsample, None, size


def chosen_tile(pixels: int, channels: int, upsample: int) -> str:
    """The autotuner's choice for a shape (its key begins PIXELS, HEIGHT, WIDTH, CIN, CHANNELS, UPSAMPLE)."""
    cache = modulation._kernels()[1].cache
    chosen = {str(config) for key, config in cache.items()
              if key[0] == pixels and key[4] == channels and key[5] == upsample}
    return " | ".join(sorted(chosen)) or "none"


def measure(batch: int, device: torch.device, generator: torch.Generator):
    """Each SPADE's row at this batch size, as soon as it is measured."""
    decoder = models.build(models.DECODER_NET)
    batched = rewrites.batch_spade_modulations(decoder)
    for name, plain, channels, x_size, upsample, slope, size in spade_uses(batched, feature_size=64):
        with torch.no_grad():
            plain.gamma_beta.weight.mul_(0.3)  # moderate modulations, as lpperf.models.weights.synthetic makes them
        fused = modulation.TritonSpadeModulation(plain)
        hidden = torch.relu(torch.randn(batch, plain.gamma_beta.in_channels, size, size, generator=generator))
        # the stream: float32 (residual_float32) for norm_0 / norm_s, conv_0's fp16 output for norm_1
        x_dtype = torch.float16 if name.endswith("norm_1") else torch.float32
        x = (torch.randn(batch, channels, x_size, x_size, generator=generator) * 3 + 1).to(x_dtype)
        expected = copy.deepcopy(plain).double()(rewrites.NormalizedStream(x.double(), upsample), hidden.double(), slope)
        hidden = hidden.to(device).half().contiguous(memory_format=torch.channels_last)
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        row = {"batch": batch, "spade": name, "channels": channels, "size": size, "upsample": upsample}
        for form, module in (("pytorch", plain), ("fused", fused)):
            module = module.to(device).half()
            if form == "pytorch":
                module.to(memory_format=torch.channels_last)
            compiled = torch.compile(lambda x, hidden, module=module: module(rewrites.NormalizedStream(x, upsample),
                                                                               hidden, slope))
            with torch.inference_mode():
                out = compiled(x, hidden)
                replay = timing.graph_replay(lambda: compiled(x, hidden), device)
                result = timing.time_callable(replay, device, rule=RULE)
            error = (torch.linalg.vector_norm(out.double().cpu() - expected) / torch.linalg.vector_norm(expected))
            row[f"{form}_ms"] = result.median_ms
            row[f"{form}_error"] = error.item()
        # the tile the autotuner chose for this shape, to prune modulation.TILES by
        row["tile"] = chosen_tile(batch * size ** 2, channels, upsample)
        print(f"b{batch} {name:26s} {channels:4d} ch {size:4d}^2  PyTorch {row['pytorch_ms']:.4f} ms  "
              f"fused {row['fused_ms']:.4f} ms  ({row['fused_ms'] / row['pytorch_ms']:.2f}x)  errors "
              f"{row['pytorch_error']:.1e} / {row['fused_error']:.1e}  tile {row['tile']}", flush=True)
        yield row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available() or not kernels.triton_available():
        print("spade_forms.py times the fused kernel on a CUDA card with Triton; this machine has "
              f"{'no CUDA card' if not torch.cuda.is_available() else 'no Triton'}", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    for limit in ("recompile_limit", "cache_size_limit"):  # one compiled function per SPADE and form
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 256)
    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(0)
    rows = []
    for batch in args.batch:
        for row in measure(batch, device, generator):
            rows.append(row)
            if args.out:  # after each row, so a run cut short keeps what it measured
                args.out.write_text(json.dumps({"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                                                "rows": rows}, indent=1))
        batch_rows = [row for row in rows if row["batch"] == batch]
        pytorch, fused = (sum(row[f"{form}_ms"] for row in batch_rows) for form in ("pytorch", "fused"))
        print(f"b{batch} all {len(batch_rows)} SPADEs: PyTorch {pytorch:.3f} ms, fused {fused:.3f} ms "
              f"({fused - pytorch:+.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

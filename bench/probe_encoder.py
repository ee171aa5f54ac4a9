"""How much shape and colour information do a model's understanding features carry? Linear probes.

    python bench/probe_encoder.py                                  # the shipped demo model
    python bench/probe_encoder.py --model runs/demo/siglip/export runs/demo/stage3/export
    python bench/probe_encoder.py --model tiny -n 1500             # a random-weight preset
    python bench/probe_encoder.py --model runs/demo/siglip/export  # a SigLIP part folder
    python bench/probe_encoder.py --supervised-baseline 300        # + an encoder trained on shape labels

Renders single-object scenes of the shapes world (random shape, colour, size, place and
background), runs the understanding path (SigLIP, then the aligner) and fits a multinomial
logistic regression (L-BFGS, small L2) on the first 2/3 of the scenes, reporting accuracy on
the rest. Feature views: the patch under the object's centre, and the mean and the max over
all patches, of the encoder and (for whole models) of the aligner's output. A SigLIP part folder
(`openjanus train export` of a siglip run) is probed inside the `--part-preset` model. Chance is
1/6 for shape and 1/9 for colour. A part that answers shape
questions at chance in `openjanus eval pope-shapes` but probes well here has the information
and the LLM is not reading it; one that probes badly here needs a better encoder.

`--supervised-baseline STEPS` also trains a fresh encoder of the `--part-preset` architecture
for STEPS AdamW steps (64 scenes each, lr 1e-3, max-pooled features, a linear shape head) on
shape labels of other scenes, and probes it the same way: what the architecture can hold when
its objective asks for shape.
"""

from __future__ import annotations

import argparse
import json
import sys


def probe_accuracy(x, y, n_classes: int, n_train: int) -> float:
    """Held-out accuracy of an L2-regularised linear classifier on standardised features."""
    import torch
    import torch.nn.functional as F

    mu, sd = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    x = (x - mu) / sd
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x[:n_train] @ w + b, y[:n_train]) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((x[n_train:] @ w + b).argmax(1) == y[n_train:]).float().mean())


def probe_model(model: str | None, n: int, seed: int, batch: int = 250,
                part_preset: str = "janus-shapes-arch") -> dict[str, float]:
    from pathlib import Path

    from openjanus.inference.pipeline import JanusPipeline

    is_part = model is not None and (Path(model) / "part.json").is_file()
    if is_part:
        from openjanus.checkpoints.weights import load_part_into

        pipe = JanusPipeline.load(part_preset, device="cpu", dtype="float32")
        load_part_into(pipe.model, "siglip", model)
    else:
        pipe = JanusPipeline.load(model, device="cpu", dtype="float32")
    return probe_pipeline(pipe, n, seed, batch, with_aligner=not is_part)  # a part has no trained aligner


def single_object_scenes(pipe, seed: int, stream: tuple[int, ...], count: int):
    """``count`` single-object scenes of ``rng_for(seed, *stream, i)``: (scenes, encoder pixels
    [count, 3, S, S], shape labels [count], colour labels [count])."""
    import torch

    from openjanus.processing import preprocess_und_images
    from openjanus.shapes.world import COLOR_NAMES, SHAPES, render, rng_for, sample_scene

    size = pipe.model.cfg.vision.image_size
    scenes = [sample_scene(rng_for(seed, *stream, i), size, n_objects=1) for i in range(count)]
    pixels = preprocess_und_images([render(s) for s in scenes], pipe.processor.image_config)
    shapes = torch.tensor([SHAPES.index(s.objects[0].shape) for s in scenes])
    colours = torch.tensor([COLOR_NAMES.index(s.objects[0].color) for s in scenes])
    return scenes, pixels, shapes, colours


def probe_pipeline(pipe, n: int, seed: int, batch: int = 250, with_aligner: bool = True) -> dict[str, float]:
    """Probe accuracies of a loaded `JanusPipeline` (see the module docstring)."""
    import torch

    from openjanus.shapes.world import COLOR_NAMES, SHAPES

    net = pipe.model
    scenes, pixels, shapes, colours = single_object_scenes(pipe, seed, (7,), n)
    with torch.no_grad():
        enc = torch.cat([net.und_encoder(pixels[i : i + batch]) for i in range(0, n, batch)])  # [n, P, D]
    grid = int(round(enc.shape[1] ** 0.5))
    if grid * grid != enc.shape[1]:
        raise SystemExit(f"{pipe.name}: {enc.shape[1]} patch features do not form a square grid")
    # The patch under each object's centre (row-major grid).
    idx = torch.tensor([min(int(s.objects[0].center[1] * grid), grid - 1) * grid
                        + min(int(s.objects[0].center[0] * grid), grid - 1) for s in scenes])
    centre = enc[torch.arange(n), idx]  # [n, D]
    views = {"encoder/centre": centre, "encoder/mean": enc.mean(1), "encoder/max": enc.amax(1)}
    if with_aligner:
        with torch.no_grad():  # the aligner maps each patch on its own
            views["aligner/centre"] = net.und_aligner(centre)
    labels = {"shape": (shapes, len(SHAPES)), "colour": (colours, len(COLOR_NAMES))}
    n_train = (2 * n) // 3
    return {f"{view}/{what}": round(probe_accuracy(x, y, k, n_train), 3)
            for view, x in views.items() for what, (y, k) in labels.items()}


def supervised_baseline(preset: str, steps: int, seed: int, batch: int = 64):
    """A `JanusPipeline` of `preset` whose encoder was trained ``steps`` steps on shape labels."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from openjanus.inference.pipeline import JanusPipeline
    from openjanus.shapes.world import SHAPES

    torch.manual_seed(seed)
    pipe = JanusPipeline.load(preset, device="cpu", dtype="float32")
    enc = pipe.model.und_encoder.train()
    head = torch.nn.Linear(pipe.model.cfg.vision.dim, len(SHAPES))
    opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=1e-3)
    for step in tqdm(range(steps), desc="supervised baseline", unit="step"):
        # Scene stream 8 never meets the probe's stream 7.
        _, x, y, _ = single_object_scenes(pipe, seed, (8, step), batch)
        loss = F.cross_entropy(head(enc(x).amax(1)), y)  # [B, P, D] -> [B, D] -> [B, shapes]
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    return pipe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=[None],
                   help="checkpoint folders or presets (default: the shipped demo model)")
    p.add_argument("-n", type=int, default=3000, help="single-object scenes (2/3 fit, 1/3 scored)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--part-preset", default="janus-shapes-arch",
                   help="the model config a SigLIP part folder is loaded into")
    p.add_argument("--supervised-baseline", type=int, default=0, metavar="STEPS",
                   help="also probe a fresh encoder trained STEPS steps on shape labels")
    p.add_argument("--json", default=None, help="write all results here")
    args = p.parse_args(argv)
    if args.n < 30:
        p.error("-n must be at least 30")
    if args.supervised_baseline < 0:
        p.error("--supervised-baseline must be >= 0")
    results = {}
    for m in args.model:
        name = m or "janus-shapes (shipped)"
        results[name] = probe_model(m, args.n, args.seed, part_preset=args.part_preset)
        _print(name, results[name])
    if args.supervised_baseline:
        name = f"{args.part_preset} encoder, {args.supervised_baseline} supervised shape steps"
        pipe = supervised_baseline(args.part_preset, args.supervised_baseline, args.seed)
        results[name] = probe_pipeline(pipe, args.n, args.seed, with_aligner=False)
        _print(name, results[name])
    print("chance: shape 0.167, colour 0.111")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


def _print(name: str, accuracies: dict[str, float]) -> None:
    print(name)
    for k, v in accuracies.items():
        print(f"  {k:<24} {v:.3f}")


if __name__ == "__main__":
    sys.exit(main())

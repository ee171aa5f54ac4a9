"""The jobs of an image-conditioned request: one masked-completion job per window of its canvas
(and per chunk of its images), stage after stage.

A canvas (`openjanus.canvas`) is planned as windows of the model's native token grid in waves;
the windows of a wave do not read each other's tokens, so they run together as rows of one
batch. A stage is one chunk of images of every window of a wave; the next stage's jobs are made
when a stage finishes, from the canvas tokens it wrote (their known tokens are data of the job).

Random streams: image i of a request seeded s has its own seed image_seed(s, i), as in a plain
request, and draws window w from image_seed(s, i) + w * WINDOW_SEED_STRIDE (window 0 from the
image's seed itself, so a native-size edit draws as a plain request does). The tokens therefore
depend only on the request, never on what else runs, on the chunking or on the order the engine
admits the stages, and `n=1` with an image's seed gives that image alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from openjanus.canvas import Canvas, CanvasTokens, Window
from openjanus.inference.runner import Job, JobState, image_job
from openjanus.inference.sampling import image_seed
from openjanus.inference.scheduler import chunk_sizes
from openjanus.requests import ImageRequest

__all__ = ["CanvasRun", "WINDOW_SEED_STRIDE", "IMAGE_SEED_STRIDE", "window_seed"]

WINDOW_SEED_STRIDE = 0xD1B54A32D192ED03  # odd: windows of one image get distinct streams
IMAGE_SEED_STRIDE = 0x9E3779B97F4A7C15  # image_seed's stride (openjanus.inference.sampling)


def window_seed(seed: int, window: int, image: int = 0) -> int:
    """The stream of `window` of image `image` of a request seeded `seed`."""
    s = image_seed(seed, image)
    return s if window == 0 else (s + window * WINDOW_SEED_STRIDE) % 2**63


@dataclass(frozen=True)
class _Part:
    window: Window
    images: slice


class CanvasRun:
    """A request's canvas while its windows decode: stages of jobs and the tokens they made."""

    def __init__(self, request: ImageRequest, canvas: Canvas, source: Tensor | None, prompt_ids: Sequence[int],
                 pad_id: int, native: int, per_chunk: int, seed: int,
                 generator: Callable[[int], torch.Generator], device: torch.device, gumbel: bool = False) -> None:
        self.request, self.canvas = request, canvas
        self.tokens = CanvasTokens(canvas, request.n, native, source, request.overlap)
        self.prompt_ids, self.pad_id, self.native = list(prompt_ids), pad_id, native
        self.device = device
        self.gumbel = gumbel  # plain windows sample by fixed Gumbel noise (jacobi="auto" with no window)
        n = request.n
        if request.jacobi:  # one job per image, all at once
            image_chunks = [[slice(i, i + 1) for i in range(n)]]
        else:
            image_chunks, start = [], 0
            for k in chunk_sizes(n, per_chunk):
                image_chunks.append([slice(start, start + k)])
                start += k
        self._stages = [[_Part(w, images) for w in wave for images in chunk]
                        for wave in self.tokens.waves for chunk in image_chunks]
        self._generators = {(w.index, i): generator(window_seed(seed, w.index, i))
                            for w in self.tokens.windows for i in range(n)}
        self.stage = -1
        self.parts: dict[Job, _Part] = {}  # the current stage's jobs
        self.done: set[Job] = set()

    @property
    def stages(self) -> int:
        return len(self._stages)

    def next_stage(self) -> list[Job]:
        """The jobs of the next stage (empty when the canvas is complete)."""
        self.stage += 1
        self.parts, self.done = {}, set()
        if self.stage >= len(self._stages):
            return []
        r = self.request
        for part in self._stages[self.stage]:
            # One stream per image of the part (a Jacobi part holds one image).
            streams = [self._generators[(part.window.index, i)] for i in range(*part.images.indices(self.request.n))]
            known = self.tokens.known(part.window, part.images).to(self.device)
            branches = r.jacobi_branches if r.jacobi else 1
            base = image_job(self.prompt_ids, self.pad_id, known.shape[0], r.guidance, r.sampling,
                             streams[0] if r.jacobi else streams, self.native ** 2, r.jacobi, branches=branches)
            job = Job("image", base.prompt_ids, base.steps, r.sampling, base.generator, guidance=r.guidance,
                      jacobi=r.jacobi, jacobi_sampler=r.jacobi_sampler, gumbel=self.gumbel and not r.jacobi,
                      known=known, branches=branches)
            self.parts[job] = part
        return list(self.parts)

    def finished(self, state: JobState) -> bool:
        """Record a finished job's tokens; whether its stage is complete."""
        part = self.parts[state.job]
        self.tokens.write(part.window, state.tokens.cpu(), part.images)
        self.done.add(state.job)
        return len(self.done) == len(self.parts)

    def progress(self, states: Sequence[JobState]) -> tuple[int, int]:
        """(positions decoded, positions in all) per image, in window positions over the stages."""
        per = self.native ** 2
        running = [s.done_steps for s in states if s.job in self.parts and s.job not in self.done]
        current = min(running) if running else (per if self.parts else 0)
        return max(0, self.stage) * per + current, len(self._stages) * per

    def partial(self) -> Tensor:
        """The canvas tokens so far [n, rows * columns]; positions not decoded yet repeat the
        nearest decoded token above them (or the most common one), so a preview decodes."""
        grid = self.tokens.grid.clone()
        n, rows, cols = grid.shape
        for i in range(n):
            g = grid[i]
            if bool((g < 0).all()):
                g.fill_(0)
                continue
            fill = torch.mode(g[g >= 0]).values
            for r in range(rows):
                missing = g[r] < 0
                if bool(missing.any()):
                    g[r][missing] = g[r - 1][missing] if r > 0 else fill
        return grid.reshape(n, -1)

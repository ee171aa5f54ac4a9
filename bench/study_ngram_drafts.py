"""Guesses from decode-time information for Gumbel Jacobi drafts: n-gram pools, the best earlier
pass, and per-position combinations (a study for issue 25; nothing here is shipped).

    OMP_NUM_THREADS=1 python bench/study_ngram_drafts.py --threads 1 --seeds 4

With the Gumbel sampler every token is argmax(log p_j + g_j) under fixed per-position noise, so
any draft is lossless: it is kept iff it equals that noisy argmax, and the tokens never depend on
the guess (checked here for every strategy against a run without speculation). A guess only
decides how many passes the image takes. Same demo model, settings, prompts and counting as
bench/study_gumbel_drafts.py (passes include the prefill; tokens per pass = 64 / passes).

Per window, each draft position p (in order, so a guess may use the guesses before it) starts as:

- left: the pass's own token at p if the window reached p (Jacobi's update), else the guess
  before it again (what `sampling.gumbel_drafts` ships);
- above: as left, the token one grid row up past the window;
- oracle: as left, the image's final token past the window (an upper bound, not a method);
- best-pass: among every pass's output at p so far, the one whose context (the tokens fed before
  p in that pass) agrees longest with the new window's (exact prefix, then the guesses before
  p), the latest on ties; past the window as left;
- ngram pools (lookahead decoding's n-gram pool, Fu et al. 2024, keyed for a 2-D grid): counts of
  next token per key, the key being the left token (`k1`) or the (left, above) pair (`k2`, falling
  back to the left token alone). `cold`: gathered while this image decodes, from its exact
  bigrams and from every pass's trajectory (the token fed at p - 1 and the pass's output at p);
  `warm`: cold plus the exact bigrams of finished images of other prompts and seeds (what a
  server would hold). Three ways to place the pool's guess:
  `past`: Jacobi's update inside the window, the pool past it (fallback left);
  `all`: the pool wherever it has the key, Jacobi's update (else left) where it has not;
  `agree`: Jacobi's update where the pass that made it fed the same left token as the new window
  now has (its immediate context agrees), else the pool, else Jacobi's update, else left;
- noise-coupled guesses past the window: argmax(log q + g_p) with position p's own Gumbel noise
  g_p (known in advance) and a proxy q for its distribution: `noisy-last` the window's last
  output, `noisy-above` the latest distribution one row up, `noisy-pool-warm-k1|k2` half that
  and half the warm pool's counts, `noisy-pos` the mean distribution at p over finished images
  of the same prompt with other seeds (a server's warm cache per prompt); inside the window
  Jacobi's update (which is already argmax(log p + g_p) under the pass's context);
- tree-K0.K1...: multi-row verification, K0 rows holding the top K0 of the pass's noisy scores at
  the first draft (the token Jacobi's update takes is the first of them), each row split K1 ways
  at the next draft, and so on (K0 x K1 x ... rows of the window a pass instead of one); the rest
  of every row as left. (Where the last pass kept its whole window, the first draft is past it:
  the candidates then come from the window's last distribution, beside the left row, one row
  more than counted; rare, as few passes keep a whole window.) Simulated exactly on one row: a
  pass keeps the row with the longest accepted run, which is the row holding the final token at
  each level where it is among the candidates (the others are rejected there), else the Jacobi
  row. The final token is only used to pick that row, as the verification would.

Columns: passes and tokens per pass for one image and for a request of --images images; "right
in" / "past": the share of draft guesses that are the final token, inside the window (Jacobi's
update, or what replaced it) and past it.

One image: the mean passes over prompts x seeds. Four images: a request's images share every
pass (README, "Jacobi rows share their passes"), so its passes are those of its slowest image
alone; measured as the max over images image_seed(seed, 0..3) run one by one.

Also printed: how often the exact next token is among a warm pool's top K for its exact left
key (what K candidate n-grams could find at best).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict

import torch

import openjanus.inference.runner as runner_mod
from openjanus.inference.engine import run_jobs
from openjanus.inference.pipeline import JanusPipeline
from openjanus.inference.runner import BatchRunner, JacobiDecoder, image_job
from openjanus.inference.sampling import filter_logits, gumbel_noise, image_seed, temper
from openjanus.requests import SamplingParams

MEASURED = ["a red circle", "two blue squares left of a green star", "three yellow triangles"]
WARM = ["a purple hexagon", "two orange circles next to a white square", "a blue square above a green star",
        "a green circle", "four red squares"]


class Pool:
    """Next-token counts per key: (left,) and (left, above)."""

    def __init__(self, base: Pool | None = None) -> None:
        self.k1: dict = defaultdict(Counter)
        self.k2: dict = defaultdict(Counter)
        if base is not None:
            for k, c in base.k1.items():
                self.k1[k].update(c)
            for k, c in base.k2.items():
                self.k2[k].update(c)

    def add(self, left: int, above: int | None, token: int) -> None:
        self.k1[left][token] += 1
        if above is not None:
            self.k2[(left, above)][token] += 1

    def guess(self, left: int, above: int | None, two: bool) -> int | None:
        if two and above is not None and (left, above) in self.k2:
            return self.k2[(left, above)].most_common(1)[0][0]
        if left in self.k1:
            return self.k1[left].most_common(1)[0][0]
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--images", type=int, default=4, help="images per request for the request figure")
    ap.add_argument("--warm-seeds", type=int, default=4)
    ap.add_argument("--strategies", nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    pipe = JanusPipeline.load(None, device="cpu", dtype="float32")
    tok, steps, width = pipe.processor.tokenizer, pipe.model.cfg.num_gen_tokens, pipe.model.cfg.vq.grid
    sampling = SamplingParams(1.0)
    next_window = JacobiDecoder._next_window
    cur: dict = {"hits": {"in": [0, 0], "past": [0, 0]}}

    def above_of(p: int, exact: list[int], d: list[int], q0: int) -> int | None:
        q = p - width
        if q < 0:
            return None
        return exact[q] if q < q0 else d[q - q0]

    def guess(outputs, accepted, n_drafts, newest):
        s, how = cur["state"], cur["how"]
        q0 = s.done_steps  # the first draft's position
        base = q0 - accepted - 1  # the position the pass's output 0 predicted
        exact = s.tokens[0, :q0].tolist()
        y = outputs.tolist()
        old = s.drafts.tokens.tolist() if s.drafts.tokens is not None else []
        fed = ({base - 1: exact[base - 1]} if base else {}) | {base + i: t for i, t in enumerate(old)}  # what it fed
        # Record this pass: its exact bigrams, its trajectory pairs, each output with its context.
        pool, records = cur["pool"], cur["records"]
        for p in range(max(base, 1), q0):
            pool.add(exact[p - 1], exact[p - width] if p >= width else None, exact[p])
        for i in range(accepted + 1, len(y)):
            p = base + i
            ab = p - width
            pool.add(fed[p - 1], None if ab < 0 else (exact[ab] if ab < base else fed[ab]), y[i])
        for i in range(len(y)):
            records[base + i].append((exact[:base] + old[:i], y[i]))
        scores, dist = cur.get("scores"), cur["dist"]
        d: list[int] = []
        for i in range(n_drafts):
            p = q0 + i
            left = exact[p - 1] if i == 0 else d[-1]
            ab = above_of(p, exact, d, q0)
            jac = y[p - base] if p - base < len(y) else None
            if how == "left":
                g = left if jac is None else jac
            elif how == "above":
                g = jac if jac is not None else (left if ab is None else ab)
            elif how == "oracle":
                g = jac if jac is not None else cur["final"][p]
            elif how == "best-pass":
                g = left
                if records.get(p):
                    ctx = exact + d
                    best_n = -1
                    for c, out in records[p]:
                        n = next((k for k in range(len(c)) if c[k] != ctx[k]), len(c))
                        if n >= best_n:
                            best_n, g = n, out
            elif how.startswith("tree"):  # rows verifying the top K_l candidates at draft l
                g = left if jac is None else jac
                ks = [int(k) for k in how.split("-")[1].split(".")]
                if i < len(ks) and all(d[k] == cur["final"][q0 + k] for k in range(i)):
                    row = cur["scores"][min(p - base, len(y) - 1)]
                    top = (row + gumbel_noise(s.drafts.key, [p], row.shape[-1])[0]).topk(ks[i])
                    if cur["final"][p] in top.indices.tolist():
                        g = cur["final"][p]  # the row the verification would keep
            elif how.startswith("noisy"):  # past the window: a proxy distribution + p's own noise
                if jac is not None:
                    g = jac
                else:
                    proxy = scores[-1]  # the window's last output: the nearest position computed
                    if how == "noisy-pos" and cur["posq"] is not None:
                        proxy = cur["posq"][p].log()
                    elif how == "noisy-above" and p - width in dist:
                        proxy = dist[p - width]
                    elif how.startswith("noisy-pool"):
                        c = (pool.k1.get(left) if how.endswith("k1") else None) or Counter()
                        if how.endswith("k2") and ab is not None:
                            c = pool.k2.get((left, ab)) or pool.k1.get(left) or Counter()
                        if c:
                            q = torch.softmax(proxy, -1) * 0.5
                            n = sum(c.values())
                            for t, k in c.items():
                                q[t] += 0.5 * k / n
                            proxy = q.log()
                    g = int((proxy + gumbel_noise(s.drafts.key, [p], proxy.shape[-1])[0]).argmax())
            else:  # ngram-<k1|k2>-<cold|warm>-<past|all|agree>
                _, key, _, place = how.split("-")
                pg = pool.guess(left, ab, key == "k2")
                if place == "past":
                    g = jac if jac is not None else (left if pg is None else pg)
                elif place == "all":
                    g = pg if pg is not None else (left if jac is None else jac)
                else:  # agree
                    if jac is not None and fed.get(p - 1) == left:
                        g = jac
                    elif pg is not None:
                        g = pg
                    else:
                        g = left if jac is None else jac
            d.append(g)
            hit = cur["hits"]["in" if jac is not None else "past"]
            hit[0] += g == cur["final"][p]
            hit[1] += 1
        return torch.tensor(d, dtype=torch.long, device=outputs.device)

    def tracked(s, logits):
        cur["state"] = s
        if cur["how"].startswith(("noisy", "tree")):  # the pass's scores, as the runner computes them
            job = s.job
            guided = logits[1] + job.guidance * (logits[0] - logits[1])
            cur["scores"] = filter_logits(temper(guided, job.sampling.temperature), job.sampling.top_k,
                                          job.sampling.top_p).float()
            for i, row in enumerate(cur["scores"]):  # each position's latest distribution (exact once done)
                cur["dist"][s.done_steps + i] = row
        return next_window(s, logits)

    runner_mod.gumbel_drafts = guess
    JacobiDecoder._next_window = staticmethod(tracked)

    def decode(prompt, seed, window, how="left", final=None, warm=None, posq=None):
        cur.update(how=how, final=final or [-1] * steps, posq=posq, pool=Pool(warm if "warm" in how else None),
                   records=defaultdict(list), dist={})
        runner = BatchRunner(pipe.model, rows=2)
        job = image_job(prompt, tok.pad_id, 1, 5.0, sampling, torch.Generator().manual_seed(seed), steps,
                        jacobi=window, jacobi_sampler="gumbel")
        state, = run_jobs(runner, [job])
        return state.tokens[0].tolist(), runner.passes

    # Warm pool: exact bigrams of finished images of other prompts and other seeds.
    warm = Pool()
    for k, text in enumerate(WARM):
        ids = tok.encode(pipe.processor.t2i_prompt(text))
        for s in range(args.warm_seeds):
            t, _ = decode(ids, 77_000 + 1000 * s + 100 * k, 1)
            for p in range(1, steps):
                warm.add(t[p - 1], t[p - width] if p >= width else None, t[p])
    print(f"warm pool: {len(WARM) * args.warm_seeds} images of {len(WARM)} other prompts, "
          f"{len(warm.k1)} left keys, {len(warm.k2)} (left, above) keys", flush=True)

    # Per-position distributions of the measured prompts, from finished images of other seeds.
    posq = {}
    for k, text in enumerate(MEASURED):
        ids = tok.encode(pipe.processor.t2i_prompt(text))
        acc = 0
        for s in range(args.warm_seeds):
            decode(ids, 88_000 + 1000 * s + 100 * k, 1, "noisy-last")
            acc = acc + torch.softmax(torch.stack([cur["dist"][p] for p in range(steps)]), -1)
        posq[tuple(ids)] = acc / args.warm_seeds

    # The measured images: request r = (prompt k, seed s), image i seeded image_seed(seed, i).
    images = []
    for s in range(args.seeds):
        for k, text in enumerate(MEASURED):
            ids = tok.encode(pipe.processor.t2i_prompt(text))
            seed = 1000 * s + 100 * k
            for i in range(args.images):
                final, _ = decode(ids, image_seed(seed, i), 1)
                images.append(((s, k), i, ids, image_seed(seed, i), final))

    # What K pool branches could buy at most: exact next token among the warm top K (left key).
    hits = Counter()
    total = 0
    for _, _, _, _, t in images:
        for p in range(1, steps):
            total += 1
            top = [x for x, _ in warm.k1.get(t[p - 1], Counter()).most_common(4)]
            for kk in (1, 2, 4):
                hits[kk] += t[p] in top[:kk]
            hits["left"] += t[p] == t[p - 1]
    print("exact token among the warm pool's top K for its exact left token: "
          + ", ".join(f"K={kk} {hits[kk] / total:.0%}" for kk in (1, 2, 4))
          + f"; equal to its left token {hits['left'] / total:.0%}", flush=True)

    strategies = args.strategies or (
        ["left", "above", "oracle", "best-pass"]
        + [f"ngram-{key}-{w}-{place}" for key, w, place in
           [("k1", "cold", "past"), ("k1", "warm", "past"), ("k2", "warm", "past"), ("k1", "warm", "all"),
            ("k1", "cold", "agree"), ("k2", "warm", "agree")]]
        + ["noisy-last", "noisy-above", "noisy-pool-warm-k1", "noisy-pool-warm-k2", "noisy-pos"]
        + ["tree-2", "tree-4", "tree-8", "tree-16", "tree-32", "tree-64", "tree-2.2", "tree-8.2"])
    print(f"{'guess':<24}{'window':>7}{'passes':>8}{'tok/pass':>9}{f'{args.images} img passes':>14}"
          f"{'tok/pass':>9}{'right in':>9}{'past':>6}", flush=True)
    cur["hits"] = {"in": [0, 0], "past": [0, 0]}
    for window in args.windows:
        for how in strategies:
            per_image, per_request = [], defaultdict(int)
            cur["hits"] = {"in": [0, 0], "past": [0, 0]}
            for req, i, ids, seed, final in images:
                tokens, p = decode(ids, seed, window, how, final, warm, posq[tuple(ids)])
                assert tokens == final, f"{how} changed the image"
                if i == 0:
                    per_image.append(p)
                per_request[req] = max(per_request[req], p)
            one = sum(per_image) / len(per_image)
            many = sum(per_request.values()) / len(per_request)
            right = {k: h[0] / max(h[1], 1) for k, h in cur["hits"].items()}
            print(f"{how:<24}{window:>7}{one:>8.1f}{steps / one:>9.2f}{many:>14.1f}{steps / many:>9.2f}"
                  f"{right['in']:>9.0%}{right['past']:>6.0%}", flush=True)
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()

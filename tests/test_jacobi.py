"""Speculative Jacobi decoding is lossless: greedy tokens equal plain decoding exactly, and
sampled tokens follow the plain sampler's distribution (a chi-square test against the exact
distribution, which fails when the acceptance rule, the coupling or the Gumbel noise is broken);
Gumbel Jacobi's tokens are a function of the seed, the same for every window."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from chi_square import chi_square
from conftest import build_tiny

import openjanus.inference.runner as gen
import openjanus.inference.sampling as spec
from openjanus.inference.engine import generate_image_tokens, run_jobs
from openjanus.inference.runner import BatchRunner, image_job
from openjanus.requests import ImageRequest, SamplingParams

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = ([1, 5, 6, 7, 8], [1, 40, 41, 2], [1, *range(10, 40), 2])


@pytest.mark.parametrize("seed", [1, 2])
def test_greedy_tokens_equal_plain_decoding(seed):
    model = build_tiny(seed=seed)
    for prompt in PROMPTS:
        plain = generate_image_tokens(model, prompt, 3, n=2, sampling=GREEDY)
        for window in (1, 3, 8):
            jacobi = generate_image_tokens(model, prompt, 3, n=2, sampling=GREEDY, jacobi=window)
            assert torch.equal(plain, jacobi), (prompt, window)


def test_greedy_through_the_engine_and_fewer_forward_passes(tiny_pipeline):
    for prompt in ("a red circle", "two blue squares left of a green star"):
        plain = tiny_pipeline.generate(ImageRequest(prompt, n=2, sampling=GREEDY))
        fast = tiny_pipeline.generate(ImageRequest(prompt, n=2, sampling=GREEDY, jacobi=4))
        assert torch.equal(plain.tokens, fast.tokens)
        assert fast.cost.forward_passes <= 2 * plain.cost.forward_passes  # per image: never more than plain


# --- the sampled distribution -----------------------------------------------------------------

TOP_K = 3  # a small support, so that a few thousand samples pin the joint distribution down
CFG = 5.0


def exact_first(model, prompt, n_tokens):
    """P(t0, ..., t_{n-1}) of plain CFG sampling with top-k, by full recomputation: {tokens: p}."""
    rows = torch.tensor([prompt, gen.unconditional_prompt(prompt, 3)])

    def dist(tokens):
        h = model.embed_text(rows)
        if tokens:
            h = torch.cat([h, model.embed_image_tokens(torch.tensor(tokens))[None].expand(2, -1, -1)], 1)
        hidden = model.llm(h, torch.arange(h.shape[1]).expand(2, -1))[:, -1]
        lg = model.image_logits(hidden)
        guided = lg[1] + CFG * (lg[0] - lg[1])
        return torch.softmax(gen.filter_logits(guided[None], TOP_K, None), -1)[0].double()

    joint = {(): 1.0}
    with torch.no_grad():
        for _ in range(n_tokens):
            joint = {seq + (t,): p * float(q[t]) for seq, p in joint.items()
                     for q in [dist(list(seq))] for t in q.nonzero().flatten().tolist()}
    return joint


def jacobi_first(model, prompt, n, seed, n_tokens=2, window=3, sampler="mcsjd", branches=1):
    g = torch.Generator().manual_seed(seed)
    sampling = SamplingParams(temperature=1.0, top_k=TOP_K)
    counts: dict[tuple[int, ...], int] = {}
    per_run = 48
    for _ in range(n // per_run):
        # n_tokens=2: the first token is drawn exactly, the second is a draft verified in one
        # window. n_tokens=3, window 2: when the first draft is rejected, the third position's
        # draft is redrawn (coupled, with MC-SJD) before it is verified.
        jobs = [image_job(prompt, 3, 1, CFG, sampling, g, n_tokens, jacobi=window, jacobi_sampler=sampler,
                          branches=branches) for _ in range(per_run)]
        for s in run_jobs(BatchRunner(model, rows=2 * per_run * branches), jobs):
            key = tuple(s.tokens[0].tolist())
            counts[key] = counts.get(key, 0) + 1
    return counts


N_SAMPLES = 2400
PROMPT = [1, 9, 8, 7, 6, 5]


@pytest.fixture(scope="module")
def model_and_joint():
    model = build_tiny(seed=3)
    return model, exact_first(model, PROMPT, 2)


def test_sampled_tokens_follow_the_plain_distribution(model_and_joint):
    model, joint = model_and_joint
    assert len(joint) == TOP_K**2
    statistic, critical = chi_square(jacobi_first(model, PROMPT, N_SAMPLES, seed=0), joint)
    assert statistic < critical


@pytest.mark.parametrize("broken", ["always accept", "resample from p"])
def test_the_distribution_test_fails_when_the_rule_is_broken(model_and_joint, monkeypatch, broken):
    model, joint = model_and_joint
    if broken == "always accept":
        monkeypatch.setattr(spec, "accept_drafts", lambda p, q, u: torch.ones_like(p, dtype=torch.bool))
    else:
        monkeypatch.setattr(spec, "residual", lambda p, q: p)
    statistic, critical = chi_square(jacobi_first(model, PROMPT, N_SAMPLES, seed=0), joint)
    assert statistic > critical


# --- the coupled redraw (MC-SJD) on the model ---------------------------------------------------

N_COUPLED = 2400  # the wrong coupling scores ~950 against a critical value of 54


@pytest.fixture(scope="module")
def model_and_joint3():
    model = build_tiny(seed=3)
    return model, exact_first(model, PROMPT, 3)


def test_coupled_drafts_follow_the_plain_distribution(model_and_joint3):
    model, joint = model_and_joint3
    statistic, critical = chi_square(jacobi_first(model, PROMPT, N_COUPLED, seed=1, n_tokens=3, window=2), joint)
    assert statistic < critical


def test_the_distribution_test_fails_for_a_wrong_coupling(model_and_joint3, monkeypatch):
    model, joint = model_and_joint3
    # Keep the previous draft unconditionally: it follows the old proposal but is tested as if
    # drawn from the new one.
    monkeypatch.setattr(spec, "couple_drafts", lambda drafts, q, new_q, g: drafts)
    statistic, critical = chi_square(jacobi_first(model, PROMPT, N_COUPLED, seed=1, n_tokens=3, window=2), joint)
    assert statistic > critical


@pytest.mark.parametrize("sampler,branches", [("mcsjd", 2), ("mcsjd", 3), ("sjd", 3)])
def test_branched_drafts_follow_the_plain_distribution(model_and_joint3, sampler, branches):
    """Three tokens, window 2, the first draft on `branches` rows (more draws from its proposal,
    without replacement), kept by recursive rejection sampling: the joint law is plain sampling's."""
    model, joint = model_and_joint3
    counts = jacobi_first(model, PROMPT, N_COUPLED, seed=1, n_tokens=3, window=2, sampler=sampler, branches=branches)
    statistic, critical = chi_square(counts, joint)
    assert statistic < critical


def test_the_distribution_test_fails_for_branches_without_the_residual(model_and_joint3, monkeypatch):
    """Testing every candidate against p itself, instead of what is left of p after the rejections
    before it (normalise(max(0, p - q))): the chi-square test rejects it (~870 against 54)."""
    model, joint = model_and_joint3

    def no_residual(p, q, candidates, generator):
        for i, x in enumerate(candidates.tolist()):
            if x < 0:
                break
            if spec.accept_drafts(p[x], q[x], torch.rand((), generator=generator, dtype=p.dtype)):
                return i, candidates[i:i + 1]
        return -1, torch.multinomial(spec.residual(p, q), 1, generator=generator)

    monkeypatch.setattr(spec, "verify_first_draft", no_residual)
    counts = jacobi_first(model, PROMPT, N_COUPLED, seed=1, n_tokens=3, window=2, sampler="mcsjd", branches=2)
    statistic, critical = chi_square(counts, joint)
    assert statistic > critical


# --- Gumbel Jacobi: fixed noise per position ------------------------------------------------------


def test_gumbel_jacobi_follows_the_plain_distribution(model_and_joint3):
    """Three tokens, window 2: each is the noisy argmax of its guided distribution given its
    prefix, with noise of its own position; the joint law is plain sampling's."""
    model, joint = model_and_joint3
    counts = jacobi_first(model, PROMPT, N_COUPLED, seed=2, n_tokens=3, window=2, sampler="gumbel")
    statistic, critical = chi_square(counts, joint)
    assert statistic < critical


def test_the_distribution_test_fails_for_noise_shared_across_positions(model_and_joint3, monkeypatch):
    """One noise vector for every position of an image (the positions' draws then depend on
    each other): the same chi-square test rejects it."""
    model, joint = model_and_joint3
    real = spec.gumbel_noise
    monkeypatch.setattr(gen, "gumbel_noise", lambda key, positions, vocab, device="cpu":
                        real(key, [0] * len(positions), vocab, device))
    counts = jacobi_first(model, PROMPT, N_COUPLED, seed=2, n_tokens=3, window=2, sampler="gumbel")
    statistic, critical = chi_square(counts, joint)
    assert statistic > critical


def gumbel_reference(model, prompt, seed, sampling, n_tokens):
    """Gumbel sampling one token per full forward pass, without a cache or a window: token j is
    argmax(filtered, tempered guided logits + the noise of position j), keyed by one draw from
    the image's stream."""
    key = spec.gumbel_key(torch.Generator().manual_seed(seed))
    rows = torch.tensor([prompt, gen.unconditional_prompt(prompt, 3)])
    tokens: list[int] = []
    with torch.no_grad():
        for j in range(n_tokens):
            h = model.embed_text(rows)
            if tokens:
                h = torch.cat([h, model.embed_image_tokens(torch.tensor(tokens))[None].expand(2, -1, -1)], 1)
            lg = model.image_logits(model.llm(h, torch.arange(h.shape[1]).expand(2, -1))[:, -1])
            guided = lg[1] + CFG * (lg[0] - lg[1])
            scores = gen.filter_logits(gen.temper(guided[None], sampling.temperature), sampling.top_k, sampling.top_p)
            tokens.append(int(spec.gumbel_tokens(scores, spec.gumbel_noise(key, [j], scores.shape[-1]))[0]))
    return torch.tensor(tokens)


@pytest.mark.parametrize("sampling", [SamplingParams(1.0), SamplingParams(0.7, top_k=20, top_p=0.9)],
                         ids=["defaults", "filtered"])
def test_gumbel_tokens_depend_on_the_seed_not_the_window(sampling):
    """The image is a function of its seed: every window gives the tokens of Gumbel sampling one
    token per pass (recomputed from scratch here), exactly; fewer passes with a window."""
    model = build_tiny(seed=4)
    steps = model.cfg.num_gen_tokens
    for seed, prompt in enumerate(PROMPTS[:2]):
        reference = gumbel_reference(model, prompt, seed, sampling, steps)
        passes = {}
        for window in (1, 4, 16):
            runner = BatchRunner(model, rows=2)
            job = image_job(prompt, 3, 1, CFG, sampling, torch.Generator().manual_seed(seed), steps,
                            jacobi=window, jacobi_sampler="gumbel")
            state, = run_jobs(runner, [job])
            assert torch.equal(state.tokens[0], reference), (seed, window)
            passes[window] = runner.passes
        assert passes[16] <= passes[4] <= passes[1] <= steps + 1, passes


def test_plain_gumbel_jobs_give_the_tokens_of_every_window():
    """A plain job of two images sampling by the same per-position noise (one token per pass, one
    pass for both) gives each image the tokens a Gumbel Jacobi job of that image's stream gives."""
    model = build_tiny(seed=4)
    steps, sampling = model.cfg.num_gen_tokens, SamplingParams(1.0, top_k=50)

    def streams():
        return [torch.Generator().manual_seed(s) for s in (11, 12)]

    plain, = run_jobs(BatchRunner(model, rows=4), [image_job(PROMPTS[1], 3, 2, CFG, sampling, streams(), steps,
                                                             gumbel=True)])
    for window in (2, 8):
        jobs = [image_job(PROMPTS[1], 3, 1, CFG, sampling, g, steps, jacobi=window, jacobi_sampler="gumbel")
                for g in streams()]
        assert torch.equal(torch.cat([s.tokens for s in run_jobs(BatchRunner(model, rows=4), jobs)]), plain.tokens)
    stream, = run_jobs(BatchRunner(model, rows=4), [image_job(PROMPTS[1], 3, 2, CFG, sampling, streams(), steps)])
    assert not torch.equal(stream.tokens, plain.tokens)  # the plain sampler's own draws differ


def test_auto_gives_the_same_gumbel_images_whatever_it_picks(tiny_pipeline, monkeypatch):
    """jacobi="auto" with the Gumbel sampler: the images depend on the seed only, whether the
    engine picks plain decoding or a window; MC-SJD's depend on the window."""
    request = ImageRequest("a red circle", n=2, seed=5, sampling=SamplingParams(1.0), jacobi="auto")
    chooser = tiny_pipeline.engine.window_chooser
    got = {}
    for window in (0, 1, 4):
        monkeypatch.setattr(chooser, "choose", lambda images, greedy, w=window: w)
        got[window] = tiny_pipeline.generate(request).tokens
    fixed = tiny_pipeline.generate(dataclasses.replace(request, jacobi=16)).tokens
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], got[4]) and torch.equal(got[0], fixed)
    mcsjd = dataclasses.replace(request, jacobi_sampler="mcsjd")
    assert not torch.equal(tiny_pipeline.generate(dataclasses.replace(mcsjd, jacobi=1)).tokens,
                           tiny_pipeline.generate(dataclasses.replace(mcsjd, jacobi=4)).tokens)


def test_gumbel_noise_is_a_function_of_key_and_position():
    a = spec.gumbel_noise(7, [3, 5], 50)
    torch.testing.assert_close(a, torch.cat([spec.gumbel_noise(7, [5], 50), spec.gumbel_noise(7, [3], 50)])[[1, 0]],
                               rtol=0, atol=0)  # exact: the same generator state draws the same bits
    assert not torch.equal(a[0], a[1]) and not torch.equal(a, spec.gumbel_noise(8, [3, 5], 50))


# --- shared forward passes ------------------------------------------------------------------------


def test_jacobi_images_share_forward_passes():
    """Four images' windows are verified in the same forward passes: together they take no more
    passes than the slowest of them alone (each job's prefill is its own pass's bits, and jobs
    of the same prompt rows admitted together copy the first one's: one prefill pass for all),
    and each image's tokens are those it gets alone. A plain job beside them feeds one token a
    row in a pass of its own length (so its bits never depend on a neighbour's window): it adds
    its decode passes, no more (its prefill is a copy too)."""
    model = build_tiny(seed=1)
    sampling = SamplingParams(temperature=1.0)
    steps = model.cfg.num_gen_tokens

    def jobs():
        return [image_job(PROMPTS[0], 3, 1, CFG, sampling, torch.Generator().manual_seed(i), steps,
                          jacobi=4 if i < 4 else 0) for i in range(5)]

    alone = []
    for job in jobs():
        runner = BatchRunner(model, rows=2)
        state, = run_jobs(runner, [job])
        alone.append((runner.passes, state.tokens))
    slowest_jacobi, plain = max(p for p, _ in alone[:4]), alone[4][0]
    assert slowest_jacobi < steps  # the windows pay here
    runner = BatchRunner(model, rows=8)
    run_jobs(runner, jobs()[:4])
    assert runner.passes <= slowest_jacobi, (runner.passes, slowest_jacobi)
    runner = BatchRunner(model, rows=10)
    together = run_jobs(runner, jobs())
    assert runner.passes <= slowest_jacobi + plain - 1, (runner.passes, [p for p, _ in alone])
    for (_, tokens), state in zip(alone, together):
        assert torch.equal(tokens, state.tokens)


def test_request_cost_counts_shared_passes_once(tiny_pipeline):
    from openjanus.inference.engine import EngineConfig

    tiny_pipeline.start_engine(EngineConfig())  # rows for all four images (an earlier test may have left fewer)
    one = tiny_pipeline.generate(ImageRequest("a red circle", n=1, seed=3, jacobi=4))
    four = tiny_pipeline.generate(ImageRequest("a red circle", n=4, seed=3, jacobi=4))
    assert one.cost.forward_passes < tiny_pipeline.model.cfg.num_gen_tokens
    # Image 0 of the four is the one-image request's image (same seed); the others are no
    # faster than a few passes more in this tiny random model.
    assert torch.equal(four.tokens[0], one.tokens[0])
    assert four.cost.forward_passes <= tiny_pipeline.model.cfg.num_gen_tokens + 1  # one prefill for all


# --- jacobi="auto" --------------------------------------------------------------------------------


def chooser_with(costs, stats=(0, 0)):
    from openjanus.inference.autowindow import WindowChooser

    chooser = WindowChooser(build_tiny(), lambda greedy: stats)
    chooser._costs = {(images, greedy): {w: costs(w + 1) for w in chooser.windows}
                      for images in (1, 4) for greedy in (False, True)}
    return chooser


def test_auto_counts_the_prefills_a_windowed_request_adds():
    """Each image of a Jacobi request is prefilled in a pass of its own; plain decoding prefills
    them in one. With prefills as dear as many steps, four images decode plain; one image, which
    has no extra prefill, still takes a window."""
    chooser = chooser_with(lambda positions: 1.0 + 0.01 * positions)  # weights dominate: windows pay
    chooser._prefill = 0.0
    assert chooser.choose(4, greedy=False) > 0
    chooser._prefill = 1000.0  # one prefill costs a thousand steps
    assert chooser.choose(4, greedy=False) == 0 and chooser.choose(1, greedy=False) > 0


def test_auto_picks_long_windows_when_weights_dominate_and_none_when_compute_does():
    from openjanus.inference.autowindow import expected_tokens

    def memory_bound(positions):  # 17 positions cost 1.16x one
        return 1.0 + 0.01 * positions

    # With the prior alone (one draft in two kept) a pass keeps < 2 tokens whatever the window:
    # 4 drafts (1.94 tokens for 1.04x) beat 16 (2.0 tokens for 1.16x).
    assert chooser_with(memory_bound).choose(1, greedy=False) == 4
    # Drafts kept 9 times in 10: long windows pay.
    assert chooser_with(memory_bound, stats=(90, 100)).choose(1, greedy=False) == 16
    compute_bound = chooser_with(lambda positions: float(positions))  # cost grows with the positions fed
    assert compute_bound.choose(1, greedy=False) == 0  # no window keeps w + 1 tokens a pass
    # Drafts that are nearly always kept make a compute-bound window pay after all.
    sure = chooser_with(lambda positions: 1.0 + 0.3 * positions, stats=(990, 1000))
    rates = sure.rates(1, greedy=False)
    assert sure.choose(1, greedy=False) == max(rates, key=rates.get) > 0
    assert rates[16] == pytest.approx(expected_tokens(991 / 1002, 16) / (1.0 + 0.3 * 17))


def test_auto_through_the_engine_is_lossless_and_measures_once(tiny_pipeline):
    plain = tiny_pipeline.generate(ImageRequest("a red circle", n=2, sampling=GREEDY))
    auto = tiny_pipeline.generate(ImageRequest("a red circle", n=2, sampling=GREEDY, jacobi="auto"))
    assert torch.equal(plain.tokens, auto.tokens)
    chooser = tiny_pipeline.engine.window_chooser
    assert set(chooser._costs) == {(2, True)} and all(c > 0 for c in chooser._costs[(2, True)].values())
    rates = chooser.rates(2, greedy=True)
    assert rates[chooser.choose(2, greedy=True)] >= rates[0]


def test_the_default_sampler_is_mcsjd_with_a_window_and_gumbel_with_auto():
    assert ImageRequest("x", jacobi=4).jacobi_sampler == "mcsjd"
    assert ImageRequest("x", jacobi="auto").jacobi_sampler == "gumbel"
    assert ImageRequest("x", jacobi="auto", jacobi_sampler="sjd").jacobi_sampler == "sjd"


@pytest.mark.parametrize("bad", ["fast", -1, 65, 2.5])
def test_jacobi_must_be_a_window_or_auto(bad):
    from openjanus.errors import UserError

    with pytest.raises(UserError, match="jacobi"):
        ImageRequest("x", jacobi=bad)
    with pytest.raises(UserError, match="jacobi_sampler must be one of mcsjd, gumbel, sjd"):
        ImageRequest("x", jacobi=4, jacobi_sampler="fast")


def test_cli_generate_with_an_auto_window(tmp_path, capsys):
    import json

    from openjanus.cli import main

    out = tmp_path / "run"
    assert main(["generate", "--model", "tiny", "--out", str(out), "--temperature", "0", "--jacobi", "auto",
                 "a red circle"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["jacobi"] == "auto" and run["jacobi_sampler"] == "gumbel" and len(run["images"]) == 1
    with pytest.raises(SystemExit) as bad:
        main(["generate", "--model", "tiny", "--out", str(tmp_path / "x"), "--jacobi", "fast", "x"])
    assert bad.value.code == 2 and "expected an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        main(["generate", "--model", "tiny", "--out", str(tmp_path / "y"), "--jacobi", "4", "--jacobi-sampler",
              "fast", "x"])
    assert bad.value.code == 2 and "invalid choice" in capsys.readouterr().err


# --- branches: several rows verify a window, each with another first draft -------------------


def test_branches_keep_the_tokens_and_take_fewer_passes():
    """A window verified on K rows at once (greedy, or Gumbel sampling at the defaults and with
    filters) gives exactly the tokens of one row: Gumbel's are recomputed from scratch one token
    per full pass, greedy's are plain decoding's. Over the cases it takes fewer passes."""
    model = build_tiny(seed=4)
    steps = model.cfg.num_gen_tokens
    passes = {1: 0, 4: 0}
    for sampling in (SamplingParams(1.0), SamplingParams(0.7, top_k=20, top_p=0.9), GREEDY):
        for seed, prompt in enumerate(PROMPTS[:2]):
            if sampling.temperature:
                reference = gumbel_reference(model, prompt, seed, sampling, steps)
            else:
                reference = generate_image_tokens(model, prompt, 3, n=1, sampling=GREEDY)[0]
            for window in (1, 4, 16):
                for branches in (1, 2, 4):
                    runner = BatchRunner(model, rows=2 * branches)
                    job = image_job(prompt, 3, 1, CFG, sampling, torch.Generator().manual_seed(seed), steps,
                                    jacobi=window, jacobi_sampler="gumbel", branches=branches)
                    state, = run_jobs(runner, [job])
                    assert torch.equal(state.tokens[0], reference), (sampling, seed, window, branches)
                    if branches in passes:
                        passes[branches] += runner.passes
    assert passes[4] < passes[1], passes


def test_branches_need_the_winners_keys_and_values(monkeypatch):
    """The test above can fail: without copying the winning branch's keys and values to the
    others after a pass, a branch that wins later starts from a prefix the model never saw and
    the tokens go wrong."""
    model = build_tiny(seed=4)
    steps, sampling = model.cfg.num_gen_tokens, SamplingParams(1.0)
    reference = gumbel_reference(model, PROMPTS[0], 0, sampling, steps)
    monkeypatch.setattr(BatchRunner, "share_branch", lambda self, state, before: None)
    runner = BatchRunner(model, rows=8)
    state, = run_jobs(runner, [image_job(PROMPTS[0], 3, 1, CFG, sampling, torch.Generator().manual_seed(0), steps,
                                         jacobi=4, jacobi_sampler="gumbel", branches=4)])
    assert not torch.equal(state.tokens[0], reference)


def test_branch_helpers():
    ranked = torch.tensor([0.1, 3.0, 2.0, -1.0, 5.0])
    assert spec.first_draft_alternatives(ranked, torch.tensor(4), 2).tolist() == [1, 2]  # the draft itself left out
    assert spec.first_draft_alternatives(ranked, torch.tensor(3), 2).tolist() == [4, 1]
    assert spec.first_draft_alternatives(ranked, torch.tensor(4), 6).tolist() == [1, 2, 0, 3, 4, 4]  # padded
    drafts = torch.tensor([7, 8, 9])
    rows = spec.branch_drafts(drafts, torch.tensor([5, 6]))
    assert rows.tolist() == [[7, 8, 9], [5, 8, 9], [6, 8, 9]]
    best = torch.tensor([[1, 2, 0, 0], [5, 8, 9, 0], [6, 8, 0, 0]])  # outputs of each branch
    assert spec.longest_run(best, rows) == 1  # branch 1 keeps 3 drafts
    assert spec.longest_run(best[[0, 2]], rows[[0, 2]]) == 1  # branch "2" keeps 2, the main row 0
    assert spec.longest_run(torch.zeros(3, 4, dtype=torch.long), rows) == 0  # ties: the main row


def test_branches_through_the_engine_and_their_bad_input(tiny_pipeline):
    from openjanus.errors import UserError

    request = ImageRequest("a red circle", n=2, seed=3, sampling=SamplingParams(1.0), jacobi=4,
                           jacobi_branches=4)
    assert request.jacobi_sampler == "gumbel"  # the default with branches
    one = tiny_pipeline.generate(dataclasses.replace(request, jacobi_branches=1))
    four = tiny_pipeline.generate(request)
    assert torch.equal(one.tokens, four.tokens)
    mcsjd = tiny_pipeline.generate(dataclasses.replace(request, jacobi_sampler="mcsjd"))
    again = tiny_pipeline.generate(dataclasses.replace(request, jacobi_sampler="mcsjd"))
    assert torch.equal(mcsjd.tokens, again.tokens)  # a seed reproduces them (a fixed window and branch count)
    for window in (0, "auto"):
        with pytest.raises(UserError, match="give a window"):
            ImageRequest("x", jacobi=window, jacobi_branches=2)
    with pytest.raises(UserError, match="jacobi_branches"):
        ImageRequest("x", jacobi=4, jacobi_branches=0)
    with pytest.raises(UserError, match="takes 128 rows per image"):
        tiny_pipeline.generate(dataclasses.replace(request, jacobi_branches=64))


def test_cli_generate_with_branches(tmp_path):
    import json

    from openjanus.cli import main

    out = tmp_path / "run"
    assert main(["generate", "--model", "tiny", "--out", str(out), "--jacobi", "4", "--jacobi-branches", "3",
                 "a red circle"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["jacobi_branches"] == 3 and run["jacobi_sampler"] == "gumbel"

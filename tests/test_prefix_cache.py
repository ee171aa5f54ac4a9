"""The prefix cache: a chat's next turn reuses the keys and values of the turns before it,
exactly (the answer tokens are those computed without it), shared across requests, within the
KV budget, least recently used out first."""

from __future__ import annotations

import torch
from test_engine import colour_images

from openjanus.inference.engine import Engine, EngineConfig
from openjanus.inference.runner import PrefixCache
from openjanus.requests import ChatRequest, Message, SamplingParams


def conversation(images, first_answer: str | None = None) -> list[ChatRequest]:
    turn1 = [Message("user", [images[0], "what is in this picture?"])]
    if first_answer is None:
        return [ChatRequest(turn1, max_new_tokens=8, stop_at_eos=False)]
    turn2 = [*turn1, Message("assistant", first_answer), Message("user", "and what colour is it?")]
    return [ChatRequest(turn2, max_new_tokens=8, stop_at_eos=False,
                        sampling=SamplingParams(temperature=1.0, top_k=20), seed=4)]


def two_turns(pipe, prefix_cache: bool):
    images = colour_images(pipe.und_image_size)
    with Engine(pipe.model, pipe.processor, EngineConfig(rows=4, prefix_cache=prefix_cache)) as engine:
        first = engine.submit(conversation(images)[0]).result()
        second = engine.submit(conversation(images, first.text)[0]).result()
        # Another caller asking the first question again: served from the cache too.
        again = engine.submit(conversation(images)[0]).result()
        return first, second, again


def test_second_turn_reuses_the_first_and_answers_the_same(tiny_pipeline):
    cold = two_turns(tiny_pipeline, prefix_cache=False)
    warm = two_turns(tiny_pipeline, prefix_cache=True)
    for c, w in zip(cold, warm):
        assert c.token_ids == w.token_ids
    first, second, again = warm
    assert [r.cost.cached_tokens for r in cold] == [0, 0, 0]
    assert first.cost.cached_tokens == 0
    # The second turn starts with the whole first turn (its image's 16 positions included).
    assert second.cost.cached_tokens >= first.prompt_tokens
    assert again.cost.cached_tokens == first.prompt_tokens - 1  # all but the position that must run


def test_a_different_image_is_not_a_hit(tiny_pipeline):
    images = colour_images(tiny_pipeline.und_image_size)
    with Engine(tiny_pipeline.model, tiny_pipeline.processor, EngineConfig(rows=4)) as engine:
        engine.submit(conversation(images)[0]).result()
        other = engine.submit(conversation(images[1:])[0]).result()
    image_at = tiny_pipeline.processor.encode_chat(conversation(images)[0].messages).image_mask.index(True)
    assert other.cost.cached_tokens == image_at  # the text before the image only


def entry(n: int, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((2, 1, n, 4), fill), torch.full((2, 1, n, 4), fill)


def test_cache_keeps_the_longest_prefix_and_evicts_least_recently_used():
    cache = PrefixCache(capacity=10)
    cache.store((1, 2, 3, 4), *entry(4, 1.0))
    cache.store((1, 2, 9), *entry(3, 2.0))
    n, k, _ = cache.lookup((1, 2, 3, 7))
    assert n == 3 and torch.equal(k, torch.full((2, 1, 3, 4), 1.0))  # longest common prefix wins
    cache.store((1, 2, 3), *entry(3))  # covered by the first entry: nothing new is held
    assert len(cache) == 2 and cache.tokens == 7
    cache.lookup((1, 2, 3, 4))  # the first entry is now the most recently used
    cache.store((5, 6, 7, 8), *entry(4))
    cache.trim()  # 11 > 10: the least recently used (1, 2, 9) goes
    assert cache.tokens == 8 and cache.lookup((1, 2, 9))[0] == 2
    cache.store((1, 2, 3, 4, 5), *entry(5))  # extends (1, 2, 3, 4), which it replaces
    assert cache.tokens == 9 and len(cache) == 2
    cache.capacity = 4  # the running requests took the rest of the budget
    cache.trim()
    assert cache.tokens <= 4
    cache.store(tuple(range(20)), *entry(20))
    cache.trim()  # larger than the whole capacity: not held
    assert cache.lookup(tuple(range(20)))[0] == 0


def test_the_kv_budget_bounds_the_cache(tiny_pipeline):
    images = colour_images(tiny_pipeline.und_image_size)
    ask = conversation(images)[0]
    hello = ChatRequest([Message("user", "hello there")], max_new_tokens=4)
    long, short = (len(tiny_pipeline.processor.encode_chat(r.messages).input_ids) for r in (ask, hello))
    budget = long + 8 + 4  # one conversation runs; the cache keeps what the running one leaves
    with Engine(tiny_pipeline.model, tiny_pipeline.processor, EngineConfig(rows=4, max_cached_tokens=budget)) as e:
        assert e.submit(ask).result().cost.cached_tokens == 0
        cache = e.core.runner.prefix_cache
        assert cache.tokens == long + 7  # all of it fits once it has finished
        e.submit(hello).result()
        assert cache.tokens == short + 3  # the first entry made room for the second request's run
        # Asking again reuses only the text the two prompts share.
        again = e.submit(ask).result()
        assert 0 < again.cost.cached_tokens < long - 1
        assert cache.tokens <= budget

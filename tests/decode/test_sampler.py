"""The sampler against slow references: full forward passes without a cache, token by token."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.decode import ForbidTokens, ForceAfter, SamplingConfig, extend, generate, sample
from research.decode import sampler as sampler_lib
from research.models import DecoderLM, ModelConfig, init_params
from research.train.sharding import make_mesh

VOCAB = 61


@pytest.fixture(scope="module")
def tiny():
    model = DecoderLM(
        ModelConfig(
            vocab_size=VOCAB,
            num_layers=2,
            d_model=32,
            num_heads=4,
            num_kv_heads=2,
            mlp_dim=64,
            max_len=48,
            tie_embeddings=False,  # an untied head's logits have unit scale: distinct argmaxes, diverse samples
        )
    )
    params = nn.unbox(init_params(model, jax.random.key(0)))
    forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
    return model, params, forward


def full_forward_logprobs(forward, params, tokens, temperature=1.0):
    """[n, L] log p(tokens[:, t] | tokens[:, <t]) from one cache-free forward per row (its real tokens only)."""
    out = np.zeros(tokens.shape, np.float32)
    for i, row in enumerate(tokens):
        logits = np.asarray(forward(params, jnp.asarray(row[None])))[0] / temperature
        logp = (
            logits
            - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True)
        )
        out[i, 1:] = logp[np.arange(len(row) - 1), row[1:]]
    return out


def real_rows(samples):
    """Each row's real tokens (prompt without padding + response), as int arrays."""
    tokens, seg = np.asarray(samples.tokens), np.asarray(samples.segment_ids)
    return [t[s != 0] for t, s in zip(tokens, seg, strict=True)]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_a_full_forward_pass(tiny, temperature):
    """The classic rollout/train mismatch: the sampler's per-token log-probs are the training forward's."""
    model, params, forward = tiny
    prompts = [[3, 4, 5, 6, 7], [9, 8], [10, 11, 12]]
    config = SamplingConfig(max_new_tokens=10, temperature=temperature, num_samples=2)
    out = sample(model, params, prompts, config, jax.random.key(3))
    assert out.tokens.shape == (6, 8 + 10) and out.prompt_len == 8  # bucket 8 for prompts of 2..5 tokens
    np.testing.assert_array_equal(np.asarray(out.prompt_index), [0, 0, 1, 1, 2, 2])
    logprobs, mask, seg = np.asarray(out.logprobs), np.asarray(out.response_mask), np.asarray(out.segment_ids)
    for i, row in enumerate(real_rows(out)):
        want = full_forward_logprobs(forward, params, row[None], temperature)[0]
        got = logprobs[i][seg[i] != 0]
        response = mask[i][seg[i] != 0]
        assert response.sum() == 10 and not response[: len(prompts[i // 2])].any()
        # float32 through a KV cache vs one full pass: the same sums in another order.
        np.testing.assert_allclose(got[response], want[response], atol=2e-5)
    assert not np.array_equal(real_rows(out)[0], real_rows(out)[1])  # two samples of one prompt differ


def test_greedy_equals_an_argmax_rollout_and_generate(tiny):
    model, params, forward = tiny
    prompts = [[3, 4, 5, 6, 7, 8, 9, 10, 11], [9, 8]]  # 9 tokens: bucket 16
    out = sample(model, params, prompts, SamplingConfig(max_new_tokens=6, temperature=0.0))
    for prompt, got in zip(prompts, out.responses(), strict=True):
        seq = list(prompt)
        for _ in range(6):  # right-padded to one length: one compile; causal, so padding never reaches t
            row = jnp.asarray([seq + [0] * (24 - len(seq))])
            seq.append(int(np.argmax(np.asarray(forward(params, row))[0, len(seq) - 1])))
        assert got == seq[len(prompt) :]
    assert generate(model, params, prompts, max_new_tokens=6) == out.responses()


def test_prompts_of_one_bucket_compile_once(tiny):
    model, params, _ = tiny
    config = SamplingConfig(max_new_tokens=3, temperature=0.0)
    sample(model, params, [[3, 4, 5]], config)
    before = sampler_lib._sample._cache_size()
    for length in (1, 2, 5, 8):  # all pad to the bucket of 8
        sample(model, params, [[7] * length], config)
    assert sampler_lib._sample._cache_size() == before
    sample(model, params, [[7] * 9], config)  # bucket 16: one more compile
    assert sampler_lib._sample._cache_size() == before + 1
    assert sampler_lib.bucket_length(9, cap=12) == 12 and sampler_lib.bucket_length(3, cap=40) == 8


def test_stop_tokens_sequences_and_min_new_tokens(tiny):
    model, params, _ = tiny
    prompt = [[3, 4, 5]]
    greedy = sample(model, params, prompt, SamplingConfig(max_new_tokens=8, temperature=0.0)).responses()[0]
    stop = greedy[2]
    first = greedy.index(stop)
    out = sample(model, params, prompt, SamplingConfig(max_new_tokens=8, temperature=0.0, stop_tokens=(stop,)))
    assert out.responses()[0] == greedy[: first + 1] and bool(out.stopped[0]) and int(out.lengths[0]) == first + 1
    seq = tuple(greedy[3:5])
    out = sample(model, params, prompt, SamplingConfig(max_new_tokens=8, temperature=0.0, stop_sequences=(seq,)))
    assert out.responses()[0] == greedy[:5]
    # min_new_tokens: the stop token is forbidden until then, so the row runs past its first greedy stop.
    out = sample(
        model, params, prompt, SamplingConfig(max_new_tokens=8, temperature=0.0, stop_tokens=(stop,), min_new_tokens=8)
    )
    assert stop not in out.responses()[0][:7] and int(out.lengths[0]) == 8
    # After a row stops, its slots are padding: segment 0, no log-prob, not in the response.
    out = sample(model, params, prompt, SamplingConfig(max_new_tokens=8, temperature=0.0, stop_tokens=(stop,)))
    tail = slice(out.prompt_len + first + 1, None)
    assert not np.asarray(out.response_mask)[0, tail].any() and not np.asarray(out.segment_ids)[0, tail].any()
    assert not np.asarray(out.logprobs)[0, tail].any()


def test_processors_forbid_and_force_inside_the_loop(tiny):
    model, params, _ = tiny
    prompt = [[3, 4, 5]]
    greedy = sample(model, params, prompt, SamplingConfig(max_new_tokens=8, temperature=0.0)).responses()[0]
    banned = greedy[0]
    config = SamplingConfig(max_new_tokens=8, temperature=1.0, num_samples=16, processors=(ForbidTokens((banned,)),))
    out = sample(model, params, prompt, config, jax.random.key(0))
    assert all(banned not in r for r in out.responses())
    # Force [50, 51, 52] right after the model emits greedy[1]: the forced tokens follow it, are marked
    # forced, have log-prob 0 (the processed distribution is a point mass) and the model resumes after.
    trigger, forced_seq = (greedy[1],), (50, 51, 52)
    config = SamplingConfig(max_new_tokens=8, temperature=0.0, processors=(ForceAfter(trigger, forced_seq),))
    out = sample(model, params, prompt, config)
    row = out.responses()[0]
    at = row.index(greedy[1]) + 1
    assert tuple(row[at : at + 3]) == forced_seq and row[:at] == greedy[:at]
    forced = np.asarray(out.forced_mask)[0, out.prompt_len :]
    assert forced.tolist() == [i in range(at, at + 3) for i in range(8)]
    np.testing.assert_allclose(np.asarray(out.logprobs)[0, out.prompt_len + at : out.prompt_len + at + 3], 0.0)


def test_continuing_a_state_equals_sampling_the_whole_prompt(tiny):
    """Sample, feed a tool's output into the cache, sample on == greedy on the concatenated prompt."""
    model, params, _ = tiny
    prompts = [[3, 4, 5], [9, 8, 7, 6]]
    greedy = SamplingConfig(max_new_tokens=4, temperature=0.0)
    first, state = sample(model, params, prompts, greedy, cache_len=8 + 4 + 3 + 4, return_state=True)
    tool = [[20, 21, 22], [23]]  # different lengths per row
    state = extend(model, params, state, tool)
    second = sample(model, params, None, greedy, state=state)
    for i, prompt in enumerate(prompts):
        whole = prompt + first.responses()[i] + tool[i]
        assert second.responses()[i] == generate(model, params, [whole], max_new_tokens=4)[0]
    with pytest.raises(ValueError, match="free slots"):
        sample(model, params, None, SamplingConfig(max_new_tokens=8), state=state)


def test_sharded_over_the_batch_axes_equals_one_device(tiny):
    model, params, _ = tiny
    mesh = make_mesh(dict(data=8, fsdp=1, tensor=1), jax.devices()[:8])
    config = SamplingConfig(max_new_tokens=5, temperature=1.0, num_samples=2)
    for count in (8, 6):  # 6 prompts: padded with dummy rows to 8 for data=8, which are dropped
        prompts = [[3 + i, 4, 5][: 1 + i % 3] for i in range(count)]
        one = sample(model, params, prompts, config, jax.random.key(1))
        many = sample(model, params, prompts, config, jax.random.key(1), mesh=mesh)
        assert many.tokens.shape == one.tokens.shape == (2 * count, 8 + 5)
        if count == 8:
            assert many.tokens.sharding.shard_shape(many.tokens.shape) == (2, 8 + 5)  # rows stay split over 8
        np.testing.assert_array_equal(np.asarray(many.tokens), np.asarray(one.tokens))
        np.testing.assert_allclose(np.asarray(many.logprobs), np.asarray(one.logprobs), atol=1e-5)


def test_texts_cut_at_stop_strings():
    class Chars:
        def decode(self, ids):
            return "".join(chr(96 + i) for i in ids)

    out = sampler_lib.Samples(
        tokens=jnp.asarray([[0, 1, 2, 3, 4]]),
        positions=jnp.zeros((1, 5), jnp.int32),
        segment_ids=jnp.ones((1, 5), jnp.int32),
        response_mask=jnp.ones((1, 5), bool),
        forced_mask=jnp.zeros((1, 5), bool),
        logprobs=jnp.zeros((1, 5)),
        lengths=jnp.asarray([4]),
        stopped=jnp.asarray([False]),
        prompt_index=jnp.asarray([0]),
        prompt_len=1,
    )
    assert out.responses() == [[1, 2, 3, 4]]
    assert out.texts(Chars()) == ["abcd"] and out.texts(Chars(), stop_strings=("c", "bc")) == ["a"]
    assert out.texts(Chars(), skip_ids=(4,)) == ["abc"]


def test_bad_inputs_are_refused_before_compiling(tiny):
    model, params, _ = tiny
    ok = SamplingConfig(max_new_tokens=4)
    with pytest.raises(ValueError, match=r"leaves no room for max_new_tokens=20.*model.max_len=48"):
        sample(model, params, [[1] * 30], SamplingConfig(max_new_tokens=20))
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        sample(model, params, [[1], []], ok)
    with pytest.raises(ValueError, match="outside"):
        sample(model, params, [[1, VOCAB]], ok)
    for field, kwargs in [
        ("max_new_tokens", dict(max_new_tokens=0)),
        ("min_new_tokens", dict(max_new_tokens=2, min_new_tokens=3)),
        ("top_p", dict(max_new_tokens=2, top_p=0.0)),
        ("num_samples", dict(max_new_tokens=2, num_samples=0)),
        ("temperature", dict(max_new_tokens=2, temperature=-1.0)),
    ]:
        with pytest.raises(ValueError, match=f"sampling.{field}="):
            sample(model, params, [[1]], SamplingConfig(**kwargs))

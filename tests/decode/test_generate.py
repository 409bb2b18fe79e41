import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.decode import generate, init_cache, left_pad, top_k_filter, top_p_filter
from research.models import DecoderLM, ModelConfig, init_params


@pytest.fixture(scope="module", params=["rope", "learned"])
def model_and_params(request):
    model = DecoderLM(
        ModelConfig(
            vocab_size=61,
            num_layers=2,
            d_model=32,
            num_heads=4,
            num_kv_heads=2,
            mlp_dim=64,
            max_len=32,
            position=request.param,
            tie_embeddings=False,
        )
    )
    return model, nn.unbox(init_params(model, jax.random.key(0)))


def test_kv_cache_logits_equal_full_forward(model_and_params):
    model, params = model_and_params
    prompts = [[3, 4, 5, 6, 7, 8], [9, 10]]
    continuation = jnp.array([[11, 12, 13], [14, 15, 16]])
    tokens, positions, seg = left_pad(prompts, max(map(len, prompts)), 0)
    cache = init_cache(model, 2, tokens.shape[1] + 3)
    # Jitted: one compile for the prefill, one for every decode step (op by op is several times slower).
    apply = jax.jit(lambda variables, t, p, s: model.apply(variables, t, positions=p, segment_ids=s, decode=True,
                                                           mutable=["cache"]))  # fmt: skip
    prefill, mutated = apply({"params": params, "cache": cache}, tokens, positions, seg)
    step_logits = [prefill[:, -1]]
    cache, pos = mutated["cache"], positions[:, -1]
    for i in range(3):
        pos = pos + 1
        ones = jnp.ones((2, 1), jnp.int32)
        logits, mutated = apply({"params": params, "cache": cache}, continuation[:, i : i + 1], pos[:, None], ones)
        cache = mutated["cache"]
        step_logits.append(logits[:, 0])
    for row, prompt in enumerate(prompts):
        full = model.apply({"params": params}, jnp.array([prompt + continuation[row].tolist()]))[0]
        expected = full[len(prompt) - 1 :]  # logits after the last prompt token and each continuation token
        got = jnp.stack([s[row] for s in step_logits])
        # float32, different summation order: worst measured 9.5e-7 on logits up to ~3 (the left-padded
        # row; 4 ulps), so 5e-6 leaves ~5x.
        np.testing.assert_allclose(got, expected, atol=5e-6)


def test_greedy_generate_matches_argmax_rollout(model_and_params):
    model, params = model_and_params
    prompts = [[3, 4, 5, 6, 7], [9, 8]]
    out = generate(model, params, prompts, max_new_tokens=6)
    # The reference: cache-free full forwards over right-padded rows of one length (one compile;
    # causal attention, so the padding after position t never reaches t's logits).
    forward = jax.jit(lambda t: model.apply({"params": params}, t))
    for prompt, got in zip(prompts, out, strict=True):
        seq = list(prompt)
        for _ in range(6):
            row = jnp.asarray([seq + [0] * (16 - len(seq))])
            seq.append(int(jnp.argmax(forward(row)[0, len(seq) - 1])))
        assert got == seq[len(prompt) :]


def test_stop_token_ends_a_row(model_and_params):
    model, params = model_and_params
    greedy = generate(model, params, [[3, 4, 5]], max_new_tokens=6)[0]
    stop = greedy[2]
    out = generate(model, params, [[3, 4, 5]], max_new_tokens=6, stop_tokens=(stop,))[0]
    assert out == greedy[: greedy.index(stop) + 1]


def test_sampling_is_seeded_and_varies(model_and_params):
    model, params = model_and_params
    kw = dict(max_new_tokens=8, temperature=1.5)
    a = generate(model, params, [[3, 4]] * 4, rng=jax.random.key(1), **kw)
    b = generate(model, params, [[3, 4]] * 4, rng=jax.random.key(1), **kw)
    c = generate(model, params, [[3, 4]] * 4, rng=jax.random.key(2), **kw)
    assert a == b and a != c


def test_bad_prompts_rejected_before_compiling(model_and_params):
    model, params = model_and_params
    with pytest.raises(ValueError, match="model.max_len=32"):
        generate(model, params, [[1] * 30], max_new_tokens=5)
    with pytest.raises(ValueError, match="leaves no room"):
        generate(model, params, [[1] * 40], max_new_tokens=1)
    with pytest.raises(ValueError, match="outside"):
        generate(model, params, [[1, 61]], max_new_tokens=2)


def test_top_k_and_top_p_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda x: (np.asarray(x) > -1e29).tolist()[0]  # noqa: E731
    assert kept(top_k_filter(logits, 2)) == [True, True, False, False]
    assert kept(top_p_filter(logits, 0.5)) == [True, False, False, False]
    assert kept(top_p_filter(logits, 0.8)) == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    assert kept(top_p_filter(logits, 0.81)) == [True, True, True, False]
    assert kept(top_p_filter(logits, 1.0)) == [True] * 4

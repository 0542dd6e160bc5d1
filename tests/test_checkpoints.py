"""Published-style checkpoints: any HF causal LM directory with the four call tokens, whatever its pad/EOS set-up.

Tiny LlamaForCausalLM and GPT2LMHeadModel directories are built here (save_pretrained
plus a tokenizer with the call tokens as added special tokens), with no pad token,
``pad_token = eos_token``, or a dedicated pad, and loaded through every entry point.
"""

from __future__ import annotations

import pytest
import torch
from runtime_fakes import PAD_SETUPS, DictStore, ScriptedLM, published_style_checkpoint, tokenizer

from lmlm_agent.agent import LMLMAgent
from lmlm_agent.decoding import DecodingConfig, interleaved_generate
from lmlm_agent.format import strip_values

PROMPTS = ["Ada Lovelace was born in", "Ko", "The capital of France is Paris. Paris"]


@pytest.fixture(scope="module", params=[(a, p) for a in ("llama", "gpt2") for p in PAD_SETUPS], ids=lambda x: "-".join(x))
def checkpoint(request, tmp_path_factory):
    arch, pad_setup = request.param
    return published_style_checkpoint(tmp_path_factory.mktemp(f"{arch}-{pad_setup}"), arch, pad_setup)


def hf_greedy(model, tok, prompt: str, n: int) -> list[int]:
    """transformers' own greedy decoding of one prompt (no lookups: the random model writes no call)."""
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    eos = tok.eos_token_id
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         repetition_penalty=1.0, pad_token_id=eos if tok.pad_token_id is None else tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    return new[: new.index(eos)] if eos in new else new


def test_agent_greedy_batched_and_sampled(checkpoint):
    agent = LMLMAgent.from_pretrained(checkpoint, max_new_tokens=12, repetition_penalty=1.0)
    batched = agent.generate(PROMPTS)
    # Greedy, batched (left padding under the mask) equals transformers' greedy on each prompt alone.
    assert [o.token_ids for o in batched] == [hf_greedy(agent.model, agent.tokenizer, p, 12) for p in PROMPTS]
    assert {t for o in batched for t in o.token_ids} != {0}  # not the "always token 0" failure
    joined = agent.decoder(PROMPTS[:1])  # continuous batching: the others join a running batch
    for _ in range(3):
        joined.step()
    joined.add(PROMPTS[1:])
    assert [o.token_ids for o in joined.run()] == [o.token_ids for o in batched]
    sampled = agent.generate(PROMPTS, do_sample=True, temperature=1.3, top_p=0.95, seed=5)
    assert [o.token_ids for o in sampled] == [o.token_ids for o in agent.generate(PROMPTS, do_sample=True, temperature=1.3,
                                                                                  top_p=0.95, seed=5)]
    assert all(o.generated_tokens >= 1 for o in sampled)
    assert agent.generate("", max_new_tokens=3)[0].generated_tokens >= 1  # an empty prompt starts at EOS


def test_chat_model_and_server_load_it(checkpoint):
    from starlette.testclient import TestClient

    from lmlm_agent.chat_model import ChatLMLM
    from lmlm_agent.server import ServerConfig, create_app, load_run

    chat = ChatLMLM(model=str(checkpoint), max_tokens=6, temperature=0.8, seed=1)
    assert isinstance(chat.invoke("Who?").content, str)
    assert len(chat.batch(["Who?", "Where?"])) == 2
    run = checkpoint.parent / "run"  # what `lmlm serve --run RUN` loads: RUN/lmlm (no kb.sqlite: no store)
    run.mkdir(exist_ok=True)
    if not (run / "lmlm").exists():
        (run / "lmlm").symlink_to(checkpoint)
    app = create_app(load_run(run), ServerConfig())
    with TestClient(app) as client:
        for body in ({"temperature": 0}, {"temperature": 1.0, "n": 2}):
            resp = client.post("/v1/chat/completions", json={"model": "lmlm", "max_tokens": 6, **body,
                                                             "messages": [{"role": "user", "content": "Who?"}]})
            assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("pad_setup", PAD_SETUPS)
def test_eos_ends_a_row_whatever_the_pad(pad_setup):
    """With pad = EOS the pad must not be banned: the scripted model ends with EOS and the row says so."""
    tok = tokenizer()
    if pad_setup == "pad_is_eos":
        tok.pad_token = tok.eos_token
    elif pad_setup == "no_pad":
        tok.pad_token = None
    assert (tok.pad_token_id is None) == (pad_setup == "no_pad")
    script = " born in <|db_entity|> Ada Lovelace<|db_relationship|> birth year<|db_return|> 1815<|db_end|> 1815."
    prompts = ["Ada Lovelace", "Ko Itakura"]
    model = ScriptedLM(tok, {"Ada Lovelace": strip_values(script), "Ko Itakura": " plays."})
    outs = interleaved_generate(model, tok, prompts, DictStore({("Ada Lovelace", "birth year"): "1815"}), DecodingConfig())
    assert [o.finish_reason for o in outs] == ["eos", "eos"]
    assert [o.text for o in outs] == [" born in 1815.", " plays."]

"""LLM.get_tokenizer()'s Hugging Face surface gives what transformers' fast tokenizer gives."""

from __future__ import annotations

from pathlib import Path

from ember.tokenizer import Tokenizer
from ember.tokenizer.hf_compat import HFTokenizer
from tests.tokenizer.tokenizer_builders import load_transformers_tokenizer

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How"},
]


def test_chat_template_tokenizes_as_transformers(any_tokenizer_dir: Path) -> None:
    ours = HFTokenizer(Tokenizer.from_dir(any_tokenizer_dir))
    theirs = load_transformers_tokenizer(any_tokenizer_dir)
    user = CHAT[:2]
    # Token ids, as transformers 4 returns them (5 returns a dict unless return_dict=False).
    assert ours.apply_chat_template(user) == theirs.apply_chat_template(user, return_dict=False)
    for kw in ({"add_generation_prompt": True}, {"continue_final_message": True}):
        messages = CHAT if "continue_final_message" in kw else user
        assert ours.apply_chat_template(messages, **kw) == theirs.apply_chat_template(
            messages, return_dict=False, **kw
        )
        text = ours.apply_chat_template(messages, tokenize=False, **kw)
        assert text == theirs.apply_chat_template(messages, tokenize=False, **kw)
    ids = ours.apply_chat_template(user, return_dict=True)
    assert ids["input_ids"] == ids.input_ids == theirs.apply_chat_template(user)["input_ids"]
    assert ours.apply_chat_template([user, user], tokenize=False) == theirs.apply_chat_template(
        [user, user], tokenize=False
    )


def test_encode_decode_and_ids_as_transformers(any_tokenizer_dir: Path) -> None:
    ours = HFTokenizer(Tokenizer.from_dir(any_tokenizer_dir))
    theirs = load_transformers_tokenizer(any_tokenizer_dir)
    text = "Hello world, héllo 12"
    assert ours(text)["input_ids"] == theirs(text)["input_ids"] == ours.encode(text)
    assert ours([text, "x"]).input_ids == theirs([text, "x"])["input_ids"]
    ids = [*ours.all_special_ids[:1], *ours.encode(text)]
    assert ours.decode(ids) == theirs.decode(ids)  # keeps special tokens, as HF's default
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(
        ids, skip_special_tokens=True
    )
    assert ours.decode(ids[1]) == theirs.decode(ids[1])
    assert ours.batch_decode([ids, ids[:2]]) == theirs.batch_decode([ids, ids[:2]])
    assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids[1]) == theirs.convert_ids_to_tokens(ids[1])
    tokens = theirs.convert_ids_to_tokens(ids)
    assert ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)
    for name in ("eos_token_id", "bos_token_id", "pad_token_id", "vocab_size"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert len(ours) == len(theirs)
    assert ours.get_vocab() == theirs.get_vocab()
    assert set(ours.all_special_ids) == set(theirs.all_special_ids)


def test_embers_own_api_is_still_there(byte_level_dir: Path) -> None:
    tok = Tokenizer.from_dir(byte_level_dir)
    hf = HFTokenizer(tok)
    assert hf.eos_token_ids == tok.eos_token_ids
    assert hf.id_to_token(5) == tok.id_to_token(5)
    text = tok.apply_chat_template(CHAT[:2])  # ember's: text, with the generation prompt
    assert isinstance(text, str)
    assert text == hf.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)

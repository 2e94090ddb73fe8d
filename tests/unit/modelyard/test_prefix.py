"""The prefix hashing scheme: equal prefixes hash equal, anything else differs."""

from __future__ import annotations

from modelyard.prefix import MAX_LINKS, PROMPT_BLOCK_BYTES, chain_of_messages, chain_of_prompt
from modelyard.v1 import common_pb2


def _msg(role: str, content: str, name: str = "") -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=content, name=name)


def test_a_longer_conversation_extends_the_chain_of_a_shorter_one() -> None:
    turn1 = [_msg("system", "be brief"), _msg("user", "hi")]
    turn2 = [*turn1, _msg("assistant", "hello"), _msg("user", "how are you?")]
    short, long = chain_of_messages(turn1), chain_of_messages(turn2)
    assert long.hashes[:2] == short.hashes
    assert long.held(set(short.hashes)) == (2, short.total_bytes)
    assert len(set(long.hashes)) == 4


def test_role_name_and_content_each_change_the_link() -> None:
    base = chain_of_messages([_msg("user", "hi")]).hashes[0]
    assert chain_of_messages([_msg("system", "hi")]).hashes[0] != base
    assert chain_of_messages([_msg("user", "hi", name="ann")]).hashes[0] != base
    assert chain_of_messages([_msg("user", "hi!")]).hashes[0] != base
    # Field boundaries cannot run together.
    assert chain_of_messages([_msg("user", "", name="x")]) != chain_of_messages([_msg("user", "x")])


def test_a_changed_early_message_changes_every_later_link() -> None:
    a = chain_of_messages([_msg("system", "A"), _msg("user", "q")])
    b = chain_of_messages([_msg("system", "B"), _msg("user", "q")])
    assert not set(a.hashes) & set(b.hashes)
    assert a.held(set(b.hashes)) == (0, 0)


def test_a_prompt_is_hashed_in_fixed_blocks_and_an_extension_keeps_its_full_blocks() -> None:
    text = "x" * (PROMPT_BLOCK_BYTES * 2 + 10)
    chain = chain_of_prompt(text)
    assert chain.ends == (PROMPT_BLOCK_BYTES, PROMPT_BLOCK_BYTES * 2, len(text))
    longer = chain_of_prompt(text + "y" * 300)
    assert longer.held(set(chain.hashes)) == (2, PROMPT_BLOCK_BYTES * 2)
    assert chain_of_prompt(text).held(set(chain.hashes)) == (3, len(text))


def test_the_chain_is_bounded() -> None:
    chain = chain_of_prompt("z" * PROMPT_BLOCK_BYTES * (MAX_LINKS + 5))
    assert len(chain.hashes) == MAX_LINKS
    assert chain_of_prompt("").hashes == ()

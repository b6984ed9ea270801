"""How a multi-turn episode is laid out in tokens: plain text prompts or the model's chat template.

A format gives the prompt tokens, the environment tokens appended after each action, the token ids that end
an action, and the tokens of a demonstrated action. Each piece is encoded once and concatenated; the
rollout never decodes and re-encodes what the model sampled.
"""

from __future__ import annotations

import weakref


class PlainFormat:
    """`instructions \\n observation \\n Action:` then the action, ended by EOS (or a newline token)."""

    cue = "\nAction:"

    def __init__(self, tokenizer, stop_on_newline: bool = True):
        self.tokenizer = tokenizer
        self.stop_ids = _eos_ids(tokenizer)
        if stop_on_newline:
            self.stop_ids |= _newline_ids(tokenizer)
        self.end_of_action = tokenizer.eos_token_id

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, instructions: str, observation: str) -> list[int]:
        head = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        text = (instructions + "\n" if instructions else "") + observation + self.cue
        return head + self._encode(text)

    def observation_ids(self, observation: str) -> list[int]:
        return self._encode("\n" + observation + self.cue)

    def action_ids(self, action: str) -> list[int]:
        return self._encode(" " + action) + [self.end_of_action]


class ChatFormat:
    """The tokenizer's chat template: instructions and observations as user turns, actions as assistant turns."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.stop_ids = _eos_ids(tokenizer)
        self.end_of_action = self._end_of_turn()

    def _end_of_turn(self) -> int:
        """The stop token the template itself closes an assistant turn with (e.g. <|im_end|>, not </s>)."""
        user = [{"role": "user", "content": "x"}]
        opened = self._template(user, add_generation_prompt=True)
        closed = self._template(user + [{"role": "assistant", "content": "y"}], add_generation_prompt=False)
        for token in closed[len(opened) :]:
            if token in self.stop_ids:
                return token
        return self.tokenizer.eos_token_id

    def _template(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        out = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
        return list(out)

    def prompt_ids(self, instructions: str, observation: str) -> list[int]:
        content = (instructions + "\n\n" if instructions else "") + observation
        return self._template([{"role": "user", "content": content}], add_generation_prompt=True)

    def observation_ids(self, observation: str) -> list[int]:
        """Tokens between an assistant's end-of-turn token and the next assistant turn.

        Rendered by difference: a dummy conversation with and without the new user turn, the prefix cut at
        its last EOS (templates often put a newline after it), as TRL does for tool results.
        """
        dummy = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        prefix = self._template(dummy, add_generation_prompt=False)
        eos_positions = [i for i, t in enumerate(prefix) if t in self.stop_ids]
        if eos_positions:
            prefix = prefix[: eos_positions[-1] + 1]
        full = self._template(dummy + [{"role": "user", "content": observation}], add_generation_prompt=True)
        if full[: len(prefix)] != prefix:
            raise ValueError(
                "chat template: the conversation prefix is not a prefix of the longer conversation"
            )
        return full[len(prefix) :]

    def action_ids(self, action: str) -> list[int]:
        return self.tokenizer.encode(action, add_special_tokens=False) + [self.end_of_action]


def _eos_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        # in the vocabulary iff its id maps back to it (cheaper than listing a 131,072-token vocabulary)
        if (
            isinstance(token_id, int)
            and token_id != tokenizer.unk_token_id
            and tokenizer.convert_ids_to_tokens(token_id) == token
        ):
            ids.add(token_id)
    return ids


# tokenizer -> (its length, its newline ids): scanned once per tokenizer object and size (added tokens rescan), not
# per format (a production vocabulary takes a second to list and scan).
_NEWLINE_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _newline_ids(tokenizer) -> set[int]:
    """Token ids whose text contains a newline (byte-level BPE such as Tekken spells it 'Ċ'; SentencePiece has no
    newline piece and falls back to the byte token '<0x0A>')."""
    size, ids = _NEWLINE_IDS.get(tokenizer, (None, frozenset()))
    if size != len(tokenizer):
        vocab = tokenizer.get_vocab()
        ids = frozenset(i for tok, i in vocab.items() if "\n" in tok or "Ċ" in tok or tok == "<0x0A>")
        _NEWLINE_IDS[tokenizer] = (len(tokenizer), ids)
    return set(ids)


def make_format(tokenizer, use_chat: bool, stop_on_newline: bool = True) -> PlainFormat | ChatFormat:
    return ChatFormat(tokenizer) if use_chat else PlainFormat(tokenizer, stop_on_newline)

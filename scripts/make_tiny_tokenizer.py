"""Train the byte-level BPE tokenizer of the built-in `tiny` model.

Run once; the output, ember/registry/data/tiny_tokenizer.json, is committed as package data,
because `tokenizers` training is not promised to be bit-for-bit reproducible across versions and
the tiny model must be identical everywhere.

    python scripts/make_tiny_tokenizer.py [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

VOCAB_SIZE = 1000  # including the special tokens below
BOS = "<|begin_of_text|>"
# Llama-3's names and order; ids follow the learned vocabulary, as in Llama 3.
SPECIAL_TOKENS = [BOS, "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

CORPUS = """\
The lighthouse keeper woke before dawn every day of the year. He climbed the hundred and twelve
steps of the tower, wiped the salt from the great lens, and wrote the weather into a thick book:
wind from the north west, sea moderate, visibility good, two fishing boats passing at six o'clock.
His daughter said the book was the most boring story ever written, but she read it anyway, because
it was the only story in the house that changed every single day.

In the kitchen, the recipe asks for two cups of flour, one spoon of sugar, a pinch of salt and
warm water. Mix the dry things first, then pour the water slowly while you stir. Knead the dough
for ten minutes until it feels smooth and springs back when you press it with a finger. Leave it
in a bowl under a cloth for an hour, shape it into a loaf, and bake it in a hot oven until the
crust is brown and the bottom sounds hollow when you knock on it.

A computer program is a list of instructions that a machine follows exactly. If the instructions
are wrong, the machine does the wrong thing very quickly. Good programmers write small functions,
give them clear names, and test them often. They read error messages carefully, because an error
message usually says what went wrong and where. When a program is slow, they measure it first
and only then change the part that takes the most time.

Questions people ask an assistant: What is the capital of France? How many days are there in a
leap year? Can you explain how a rainbow forms? Please write a short poem about the sea. Why is
the sky blue during the day and red at sunset? What time is it in Tokyo when it is noon in London?
Answers should be short, polite and correct; if the assistant does not know, it should say so.

The river started as a thin stream high in the mountains, where snow melted under the spring sun.
It ran through forests and fields, past villages and mills, and grew wider with every valley it
crossed. Children played on its banks in summer, and in winter the shallow parts froze so hard
that the whole town came out to skate. Near the sea it slowed down, spread into a wide brown
delta, and finally disappeared into the salty water it had been looking for all along.

Numbers appear everywhere: 1, 2, 3, 10, 42, 100, 365, 1024, 2048 and 3.14159. Prices like $5.99
or 20% off, dates like 2024-05-17, times like 09:30 and 18:45, and phone numbers like 555-0100.
Symbols matter too: commas, periods; colons: quotes "like this" and 'like that', (parentheses),
[brackets], {braces}, the hash #, the at sign @, ampersands & and the occasional exclamation!

She opened the old letter carefully. "Dear friend," it began, "I hope this finds you well. The
garden is full of tomatoes this year, more than we can eat, and the apple tree finally gave
fruit after five long years of waiting. We think of you often and wish you would visit soon."
At the bottom, in smaller writing, someone had added: "Bring your boots, the path is muddy."

Science begins with curiosity. A scientist asks a question, makes a guess called a hypothesis,
and designs an experiment to test it. The results are recorded honestly, even when they are
disappointing, and other people repeat the experiment to check. Over time, many careful
experiments build a picture of the world that is reliable enough to fly planes, cure diseases
and send small robots to other planets.
"""


def build() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def main() -> None:
    default_out = Path(__file__).resolve().parents[1] / "ember/registry/data/tiny_tokenizer.json"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    tokenizer = build()
    if tokenizer.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE:
        raise SystemExit("the corpus is too small for the vocabulary; add text to CORPUS")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(tokenizer.to_str(pretty=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, vocab {VOCAB_SIZE})")


if __name__ == "__main__":
    main()

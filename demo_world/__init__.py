"""The demo world: the embedded environment in which continual-opd runs on a laptop CPU with no network.

Synthetic skills with exact verifiers (`SKILLS`, referenced from skill files as `generator: demo_world:ID`),
a character tokenizer, a tiny Llama, its pretraining, and `bootstrap`, which registers the first champion.
It depends on the core package (`continual_opd`) and nothing else of the product; no stage imports it.
"""

from demo_world.skills import CATALOGUE, SKILLS

__all__ = ["CATALOGUE", "SKILLS"]

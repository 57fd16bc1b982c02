"""What an adversary would try against faceveil, measured: ``faceveil attack``.

One module per attack — :mod:`.kdf` (password guessing), :mod:`.wrong_keys`, :mod:`.spoofing`,
:mod:`.byproduct`, :mod:`.keyless` (reusing ``benchmarks/attack_decoder.py``),
:mod:`.known_plaintext`, :mod:`.reident` — each with ``run(ctx) -> dict`` and
``markdown(result) -> str``; :mod:`.suite` runs them, writes ``docs/results/security.json`` and
generates ``docs/SECURITY.md``. The threat model they test is ``docs/THREAT_MODEL.md``.
"""

from .suite import ATTACKS, add_attack_arguments, main, run_attack

__all__ = ["ATTACKS", "add_attack_arguments", "run_attack", "main"]

"""faceveil: veil every face in a photo; lift the veil with the password.

PRO-Face S (keyed invertible hiding network) on whole photos, with the originals recoverable from
the saved 8-bit PNG.
"""

__version__ = "0.1.0"

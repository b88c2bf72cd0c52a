"""mailflow-probe: does mail cross the forest boundary through each smart host, and how fast?"""

from __future__ import annotations

__version__ = "0.1.0"

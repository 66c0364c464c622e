"""The toy world's one table: every attribute, its values, how each value is rendered, and the
caption grammar. Writers (toyworld.py, toyworld_av.py) draw from it; probes (toyworld_probes.py)
classify back into it, so every output can be checked against its prompt.

- colour (red green blue yellow): the shape's fill in images and videos; in sound, the tone's pitch
  (low 440 Hz, middle 660, high 990, shrill 1485: red -> low ...);
- shape (circle square triangle): the filled outline in images and videos;
- position (left right top bottom center): where a still image's shape sits;
- motion (left right up down): where a video's shape moves; in sound, the pulse rate
  (pulsing 2/s, beeping 3/s, ticking 5/s, rattling 8/s: left -> pulsing ...);
- speed (slowly quickly): 0.15 or 0.30 frame sides per second travelled by a video's shape.

Captions (the grammar; ``TEMPLATES`` below, parsed back by ``parse_caption``):
  image: "a red circle on the left"              (today's world, unchanged)
  video: "a blue square moving up quickly, with a high ticking tone"
  (silent video, parse only: "a blue square moving up quickly")
  audio: "a high ticking tone"
  audioset labels: "high tone, ticking"          (two class labels joined by AudioSet's ", ")
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# colour -> fill RGB, the tone's pitch name and frequency (pitch encodes colour: red -> 440 Hz)
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
PITCHES = {  # colour -> (pitch word, Hz); a factor 1.5 apart so the nearest class is never in doubt
    "red": ("low", 440.0),
    "green": ("middle", 660.0),
    "blue": ("high", 990.0),
    "yellow": ("shrill", 1485.0),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {  # centre of the shape, as a fraction of the canvas (x, y)
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "center": (0.5, 0.5),
}
POSITION_PHRASES = {p: ("in the center" if p == "center" else f"on the {p}") for p in POSITIONS}
DIRECTIONS = {  # motion -> unit step in image coordinates (x right, y down)
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
RHYTHMS = {  # motion -> (rhythm word, pulses per second); rhythm encodes motion
    "left": ("pulsing", 2.0),
    "right": ("beeping", 3.0),
    "up": ("ticking", 5.0),
    "down": ("rattling", 8.0),
}
SPEEDS = {"slowly": 0.15, "quickly": 0.30}  # frame sides per second travelled by the shape's centre
BACKGROUND = (245, 245, 240)
SHAPE_RADIUS = 0.2      # half the side of a still image's shape, as a fraction of the shorter side
VIDEO_RADIUS = 0.14     # the same in videos (smaller: the shape travels without leaving the frame)
PULSE_DUTY = 0.5        # fraction of each pulse period the tone sounds
PULSE_RAMP_S = 0.004    # raised-cosine fade in/out of each pulse (no clicks)
TONE_AMPLITUDE = 0.5

TEMPLATES = {
    "image": "a {colour} {shape} {position}",
    "video": "a {colour} {shape} moving {motion} {speed}, with a {pitch} {rhythm} tone",
    "silent_video": "a {colour} {shape} moving {motion} {speed}",
    "audio": "a {pitch} {rhythm} tone",
    "audioset": "{pitch} tone, {rhythm}",
}

PITCH_WORDS = {word: colour for colour, (word, _) in PITCHES.items()}
RHYTHM_WORDS = {word: motion for motion, (word, _) in RHYTHMS.items()}


@dataclass(frozen=True)
class Scene:
    """One still scene: a single coloured shape at a named position."""

    color: str
    shape: str
    position: str

    @property
    def caption(self) -> str:
        return TEMPLATES["image"].format(colour=self.color, shape=self.shape,
                                         position=POSITION_PHRASES[self.position])

    def attributes(self) -> dict[str, str]:
        return {"colour": self.color, "shape": self.shape, "position": self.position}


@dataclass(frozen=True)
class Sound:
    """A pulsed tone: pitch (a colour's word) and rhythm (a motion's word)."""

    pitch: str
    rhythm: str

    @property
    def frequency(self) -> float:
        return PITCHES[PITCH_WORDS[self.pitch]][1]

    @property
    def rate(self) -> float:
        return RHYTHMS[RHYTHM_WORDS[self.rhythm]][1]

    @property
    def caption(self) -> str:
        return TEMPLATES["audio"].format(pitch=self.pitch, rhythm=self.rhythm)

    def attributes(self) -> dict[str, str]:
        return {"pitch": self.pitch, "rhythm": self.rhythm}


@dataclass(frozen=True)
class Clip:
    """One video: a coloured shape moving in a direction at a speed, with its sound."""

    color: str
    shape: str
    motion: str
    speed: str

    @property
    def sound(self) -> Sound:
        return Sound(PITCHES[self.color][0], RHYTHMS[self.motion][0])

    @property
    def caption(self) -> str:
        return TEMPLATES["video"].format(colour=self.color, shape=self.shape, motion=self.motion,
                                         speed=self.speed, pitch=self.sound.pitch, rhythm=self.sound.rhythm)

    def attributes(self) -> dict[str, str]:
        return {"colour": self.color, "shape": self.shape, "motion": self.motion, "speed": self.speed,
                **self.sound.attributes()}


def implied(attributes: dict) -> dict:
    """Close an attribute dict under the world's cross-modal links (colour <-> pitch, motion <-> rhythm)."""
    out = dict(attributes)
    if out.get("colour") in PITCHES:
        out.setdefault("pitch", PITCHES[out["colour"]][0])
    if out.get("pitch") in PITCH_WORDS:
        out.setdefault("colour", PITCH_WORDS[out["pitch"]])
    if out.get("motion") in RHYTHMS:
        out.setdefault("rhythm", RHYTHMS[out["motion"]][0])
    if out.get("rhythm") in RHYTHM_WORDS:
        out.setdefault("motion", RHYTHM_WORDS[out["rhythm"]])
    return out


# Every slot of a template, with its phrase -> value table (the grammar's terminals).
_SLOTS = {
    "colour": {c: c for c in COLORS},
    "shape": {s: s for s in SHAPES},
    "position": {phrase: p for p, phrase in POSITION_PHRASES.items()},
    "motion": {d: d for d in DIRECTIONS},
    "speed": {s: s for s in SPEEDS},
    "pitch": {w: w for w in PITCH_WORDS},
    "rhythm": {w: w for w in RHYTHM_WORDS},
}


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if i % 2 == 0 else
                    f"(?P<{p}>{'|'.join(re.escape(k) for k in sorted(_SLOTS[p], key=len, reverse=True))})"
                    for i, p in enumerate(parts))
    return re.compile(r"\b" + regex.replace(r"\ ", r"\s+") + r"\b")


_PATTERNS = {kind: _pattern(template) for kind, template in TEMPLATES.items()}
_PATTERN_ORDER = ("video", "silent_video", "image", "audio", "audioset")


def parse_caption(text: str) -> dict[str, str]:
    """A caption's attributes by the grammar (the longest template that occurs in it); {} if none does.

    Case and runs of whitespace are ignored and the phrase may sit inside other words (generated text
    is rarely exact), but only a whole grammatical phrase counts: "red" alone gives nothing.
    """
    normal = " ".join(str(text).lower().split())
    for kind in _PATTERN_ORDER:
        match = _PATTERNS[kind].search(normal)
        if match:
            return {slot: _SLOTS[slot][value] for slot, value in match.groupdict().items()}
    return {}

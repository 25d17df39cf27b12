"""Split a streamed LLM reply into speakable pieces for the TTS, as early as possible.

The LLM streams arbitrary fragments (parts of words, single CJK characters, newlines); the TTS
wants whole sentences. `SentenceChunker` cuts a piece as soon as its end is certain, which for
an ASCII `.!?` means seeing the next character. Choices where the rules leave room:

- `a.m.`/`p.m.`/`etc.` end a sentence unless the next word starts with a lowercase letter
  (`10 a.m. tomorrow` stays whole, `at 9 a.m. Bring coffee` splits). `No.` continues only
  before a number (`No. 5`). The other abbreviations and dotted ones (`U.S.`, `e.g.`) never end
  a sentence, and neither does a single capital initial other than `I`.
- `.!?` followed directly by a CJK character also end a sentence (`好用!我`); `…` does not.
- A code fence (three or more backticks, anywhere) ends the current piece and everything up to
  the closing fence is dropped; an unclosed fence drops the rest of the reply.
- Limits are counted in English characters. For a Chinese reply (`language="zh"`) each limit is a
  third as many characters: a Chinese character is a whole syllable, about as much speech as three
  English letters (some 5 syllables a second against 15 letters), and an LLM spends about as many
  tokens on it as on three letters, so the early first piece comes as soon for either language.
- `speakable` replaces a bare URL with its domain (`https://www.python.org/downloads/` is
  spoken as `python.org`), keeps e-mail addresses and bare domains, drops images and keeps the
  text of links.
"""

from __future__ import annotations

import math
import re
import unicodedata
from urllib.parse import urlsplit

CJK_SENTENCE_ENDS = frozenset("。！？；")
ASCII_SENTENCE_ENDS = frozenset(".!?…")
SENTENCE_ENDS = CJK_SENTENCE_ENDS | ASCII_SENTENCE_ENDS
# Characters that stay with the sentence they close: `."`, `!)`, `。」`, `.**`.
CLOSERS = "\"')]}»”’」』）》〉】*_"
OPENERS = "\"'([{«“‘「『（《〈【*_"
CJK_CLAUSE_ENDS = frozenset("，、：")
ASCII_CLAUSE_ENDS = frozenset(",;:")

MIN_CLAUSE_PIECE_CHARS = 12
# A first sentence with no comma is cut before a phrase-starting word once it runs this far past
# first_piece_chars; a cut mid-phrase would sound worse than waiting.
FIRST_PIECE_GRACE_CHARS = 20
PHRASE_START = re.compile(
    r"(?<=\s)(?=(?:and|but|or|so|because|which|that|who|where|when|while|if|although|since|until|"
    r"in|on|at|of|to|for|with|from|by|into|about|through|after|before|during)\s)",
    re.IGNORECASE,
)
FENCE_BACKTICKS = 3
# How many English characters' worth of speech one character of the language carries (1 if not listed).
ENGLISH_CHARS_PER_CHAR = {"zh": 3}

NEVER_FINAL_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "e.g", "i.e", "approx", "inc", "ltd", "co"}
    | {"u.s", "u.k", "cf", "fig", "al", "mt"}
)
# These end a sentence often enough that only a lowercase next word keeps the sentence going.
MAYBE_FINAL_ABBREVIATIONS = frozenset(["a.m", "p.m", "etc"])
DOTTED_ABBREVIATION = re.compile(r"(?:[a-z]\.)+[a-z]")
CJK_CHARACTER = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]")

FENCED_CODE = re.compile(r"`{3,}.*?(?:`{3,}|\Z)", re.DOTALL)
IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
AUTOLINK = re.compile(r"<((?:https?://|www\.)[^>\s]+)>", re.IGNORECASE)
BARE_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'`]+", re.IGNORECASE)
URL_TRAILING_PUNCTUATION = ".,;:!?)]}'\""
BLOCKQUOTE = re.compile(r"^\s*(?:>\s?)+")
HORIZONTAL_RULE = re.compile(r"\s*([-*_])(?:\s*\1){2,}\s*")
HEADING = re.compile(r"^\s*#{1,6}(?:\s+|$)")
BULLET = re.compile(r"^\s*[-*+]\s+")
NUMBERED_ITEM = re.compile(r"^\s*\d{1,3}[.)]\s+")
TABLE_DIVIDER_CELL = re.compile(r":?-+:?")
STRONG_STARS = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
STRONG_UNDERSCORES = re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
EMPHASIS_STAR = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
EMPHASIS_UNDERSCORE = re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)")
STRIKETHROUGH = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
# Stars left unpaired when a piece boundary fell inside `**bold**`; `2*3` and `2 * 3` stay.
STRAY_STARS = re.compile(r"(?<=\S)\*+(?!\S)|(?<!\S)\*+(?=\S)")
BACKTICKS = re.compile(r"`+")
KEYCAP = re.compile("[0-9#*]\ufe0f?\u20e3")
WHITESPACE = re.compile(r"\s+")
SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+(?=[,.!?;:%)\]}。，！？；：、])")
KEPT_SYMBOLS = frozenset("°℃℉")  # 气温-5℃: a unit, not an emoji


class _NeedMoreText(Exception):
    """The next cut depends on text that has not arrived yet."""


def chars_for_language(english_chars: int, language: str) -> int:
    """How many characters of `language` carry as much speech as `english_chars` English ones."""
    return math.ceil(english_chars / ENGLISH_CHARS_PER_CHAR.get(language, 1))


class SentenceChunker:
    """Turns a stream of LLM tokens into speakable pieces, as early as possible.

    The limits are in English characters; `language` (the reply's, e.g. as Whisper detected the question's)
    scales them to characters of that language.
    """

    def __init__(self, first_piece_chars: int = 60, max_piece_chars: int = 250, language: str = "en") -> None:
        if first_piece_chars < 1 or max_piece_chars < 1:
            raise ValueError("first_piece_chars and max_piece_chars must be at least 1")
        self.language = language
        self.first_piece_chars = chars_for_language(first_piece_chars, language)
        self.max_piece_chars = chars_for_language(max_piece_chars, language)
        self._min_clause_chars = chars_for_language(MIN_CLAUSE_PIECE_CHARS, language)
        self._first_piece_grace_chars = chars_for_language(FIRST_PIECE_GRACE_CHARS, language)
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new reply or a cancelled turn)."""
        self._text = ""  # the current piece so far, without fenced code or leading whitespace
        self._scan_from = 0  # every position before this one is known not to end the piece
        self._seeking_clause = False
        self._first_pending = True
        self._at_line_start = True
        self._final = False
        self._in_fence = False
        self._backtick_run = 0

    def feed(self, token: str) -> list[str]:
        """The pieces completed by this token (usually none or one)."""
        self._text += self._without_fenced_code(token)
        return self._drain()

    def flush(self) -> list[str]:
        """End of reply: whatever is left, as pieces; the chunker is then ready for the next reply."""
        if self._backtick_run:
            self._text += self._end_backtick_run()
        self._final = True
        pieces = self._drain()
        self.reset()
        return pieces

    def _without_fenced_code(self, token: str) -> str:
        kept = []
        for char in token:
            if char == "`":
                self._backtick_run += 1
                continue
            if self._backtick_run:
                kept.append(self._end_backtick_run())
            if not self._in_fence:
                kept.append(char)
        return "".join(kept)

    def _end_backtick_run(self) -> str:
        run, self._backtick_run = self._backtick_run, 0
        if run >= FENCE_BACKTICKS:
            self._in_fence = not self._in_fence
            return "\n"  # a code block is a break in the speech
        return "" if self._in_fence else "`" * run

    def _drain(self) -> list[str]:
        pieces = []
        while True:
            self._drop_leading_whitespace()
            if not self._text:
                return pieces
            try:
                cut = self._find_cut()
            except _NeedMoreText:
                return pieces
            piece = speakable(self._text[:cut])
            self._at_line_start = self._text[cut - 1] == "\n"
            self._text = self._text[cut:]
            self._scan_from = 0
            self._seeking_clause = False
            if piece:
                pieces.append(piece)
                self._first_pending = False

    def _drop_leading_whitespace(self) -> None:
        stripped = self._text.lstrip()
        if len(stripped) < len(self._text):
            if "\n" in self._text[: len(self._text) - len(stripped)]:
                self._at_line_start = True
            self._text = stripped

    def _char(self, index: int) -> str:
        """The character at index; '' past the end of the reply."""
        if index < len(self._text):
            return self._text[index]
        if self._final:
            return ""
        raise _NeedMoreText

    def _find_cut(self) -> int:
        """Where the current piece ends, exactly as if the whole reply had arrived at once."""
        index = self._scan_from
        while True:
            self._scan_from = index
            if index >= len(self._text):
                if self._final:
                    return len(self._text)
                raise _NeedMoreText
            if index == self.max_piece_chars:
                return self._cap_cut()
            if self._first_pending and index == self.first_piece_chars:
                cut = self._last_clause_cut(self.first_piece_chars)
                if cut is not None:
                    return cut
                self._seeking_clause = True
            if self._seeking_clause and index == self.first_piece_chars + self._first_piece_grace_chars:
                cut = self._phrase_cut(index)
                if cut is not None:
                    return cut
            char = self._text[index]
            if char == "\n":
                return index + 1
            if char in SENTENCE_ENDS:
                cut = self._sentence_cut(index)
                if cut is not None:
                    return cut
            if self._seeking_clause and self._is_clause_cut(index + 1):
                return index + 1
            index += 1

    def _sentence_cut(self, index: int) -> int | None:
        """The cut after the sentence end at index, or None if it does not end a sentence."""
        char = self._text[index]
        end = index + 1
        while (after := self._char(end)) and (after in SENTENCE_ENDS or after in CLOSERS):
            end += 1
        if char in CJK_SENTENCE_ENDS or not after:
            return end
        run = self._text[index:end]
        if after.isspace() or (char != "…" and CJK_CHARACTER.match(after)):
            if run.rstrip(CLOSERS) == "." and self._dot_continues_sentence(index, end):
                return None
            return end
        return None

    def _dot_continues_sentence(self, dot: int, after_run: int) -> bool:
        """Whether the single `.` at dot ends an abbreviation, initial or list number."""
        start = dot
        while start > 0 and not self._text[start - 1].isspace():
            start -= 1
        word = self._text[start:dot].lstrip(OPENERS)
        lowered = word.lower()
        if lowered in MAYBE_FINAL_ABBREVIATIONS:
            return self._next_word_start(after_run).islower()
        if lowered == "no":
            return self._next_word_start(after_run).isdigit()
        if lowered in NEVER_FINAL_ABBREVIATIONS or DOTTED_ABBREVIATION.fullmatch(lowered):
            return True
        if len(word) == 1 and word.isupper() and word != "I":
            return True
        return word.isdigit() and start == 0 and self._at_line_start

    def _next_word_start(self, index: int) -> str:
        while (char := self._char(index)) and char.isspace() and char != "\n":
            index += 1
        return char

    def _is_clause_cut(self, cut: int) -> bool:
        if cut < self._min_clause_chars:
            return False
        char = self._text[cut - 1]
        if char in CJK_CLAUSE_ENDS:
            return True
        if char in ASCII_CLAUSE_ENDS:
            after = self._char(cut)
            return after.isspace() or bool(CJK_CHARACTER.match(after))
        return False

    def _last_clause_cut(self, limit: int) -> int | None:
        for cut in range(limit, self._min_clause_chars - 1, -1):
            if self._is_clause_cut(cut):
                return cut
        return None

    def _phrase_cut(self, limit: int) -> int | None:
        """The last cut before `limit` where a phrase starts ("... the eye | that sees ..."), for a first piece
        that has no comma: speech starts sooner, and the break falls where a speaker might pause."""
        for match in reversed(list(PHRASE_START.finditer(self._text, self._min_clause_chars, limit))):
            if match.start() >= self._min_clause_chars:
                return match.start()
        return None

    def _cap_cut(self) -> int:
        """Where to cut a piece that reached max_piece_chars: a clause end, else a space, else anywhere."""
        limit = self.max_piece_chars
        cut = self._last_clause_cut(limit)
        if cut is not None:
            return cut
        for space in range(limit, 0, -1):
            if self._text[space].isspace():
                return space
        return limit


def speakable(text: str) -> str:
    """Text as it should be spoken: markdown, emoji and URLs removed or made speakable; '' if nothing is left."""
    text = FENCED_CODE.sub(" ", text)
    text = IMAGE.sub(" ", text)
    text = LINK.sub(r"\1", text)
    text = AUTOLINK.sub(r"\1", text)
    text = BARE_URL.sub(_spoken_url, text)
    text = " ".join(_speakable_line(line) for line in text.split("\n"))
    text = STRONG_STARS.sub(r"\1", text)
    text = STRONG_UNDERSCORES.sub(r"\1", text)
    text = EMPHASIS_STAR.sub(r"\1", text)
    text = EMPHASIS_UNDERSCORE.sub(r"\1", text)
    text = STRIKETHROUGH.sub(r"\1", text)
    text = STRAY_STARS.sub("", text)
    text = BACKTICKS.sub("", text)
    text = KEYCAP.sub(" ", text)
    text = "".join(" " if _is_emoji(char) else char for char in text)
    text = WHITESPACE.sub(" ", text)
    text = SPACE_BEFORE_PUNCTUATION.sub("", text).strip()
    return text if any(char.isalnum() for char in text) else ""


def _spoken_url(match: re.Match[str]) -> str:
    url = match.group(0)
    address = url.rstrip(URL_TRAILING_PUNCTUATION)
    try:
        host = urlsplit(address if "://" in address else "//" + address).hostname or ""
    except ValueError:
        host = ""
    return host.removeprefix("www.") + url[len(address) :]


def _speakable_line(line: str) -> str:
    line = BLOCKQUOTE.sub("", line)
    if HORIZONTAL_RULE.fullmatch(line):
        return ""
    line = HEADING.sub("", line)
    line = BULLET.sub("", line)
    line = NUMBERED_ITEM.sub("", line)
    if "|" in line:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if all(TABLE_DIVIDER_CELL.fullmatch(cell) for cell in cells if cell):
            return ""
        line = ", ".join(cell for cell in cells if cell)
    return line


def _is_emoji(char: str) -> bool:
    code = ord(char)
    if char in KEPT_SYMBOLS:
        return False
    return (
        unicodedata.category(char) == "So"
        or code in (0x200D, 0x20E3)  # zero-width joiner, combining keycap
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0x1F000 <= code <= 0x1FAFF  # emoji blocks, including skin tones and regional indicators
        or 0x2600 <= code <= 0x27BF  # miscellaneous symbols and dingbats
        or 0xE0020 <= code <= 0xE007F  # tag characters in subdivision flags
    )

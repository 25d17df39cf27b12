"""The sentence chunker: streamed LLM tokens in, speakable pieces out, the same however the reply is split."""

from __future__ import annotations

import random
import re

import pytest

from voicebot.chunker import SentenceChunker, chars_for_language, speakable

# Roughly how an LLM tokenizer splits text: words with their leading space, numbers, one or two
# CJK characters, newlines, and backticks in pairs so that a code fence arrives as "``" + "`".
LLM_TOKEN = re.compile(r" ?[A-Za-z']+| ?\d+|[\u3400-\u9fff]{1,2}|\n+|`{1,2}| +|.", re.DOTALL)


def llm_tokens(text: str) -> list[str]:
    tokens = LLM_TOKEN.findall(text)
    assert "".join(tokens) == text
    return tokens


SPLITTERS = {
    "chars": list,
    "llm_tokens": llm_tokens,
    "chunks_of_3": lambda text: [text[i : i + 3] for i in range(0, len(text), 3)],
    "whole": lambda text: [text],
}


def params(table: list[tuple]) -> list:
    """pytest params from a table whose rows start with an id."""
    return [pytest.param(*row[1:], id=row[0]) for row in table]


def chunk(text: str, split, **options) -> list[str]:
    chunker = SentenceChunker(**options)
    pieces = []
    for token in split(text):
        pieces += chunker.feed(token)
    return pieces + chunker.flush()


LONG_ENGLISH = (
    "When you get a chance tomorrow morning, please remember to pick up some milk and eggs "
    "from the store on the way home."
)
LONG_CHINESE = (
    "我们今天先去超市买一些新鲜的水果和蔬菜，然后回家洗干净切好放进冰箱里面保存起来，"
    "晚上再请几位好朋友一起来家里吃饭聊天喝茶，最后大家一起看一部有趣的电影。"
)

CASES = [
    ("english", "Hello there! How are you today? I am fine.", ["Hello there!", "How are you today?", "I am fine."]),
    (
        "chinese",
        "今天天气很好。我们去公园吧！你想去吗？好的；走吧。",
        ["今天天气很好。", "我们去公园吧！", "你想去吗？", "好的；", "走吧。"],
    ),
    (
        "chinese_quotes",
        "他说：“你好。”然后走了。「好的！」他笑了。",
        ["他说：“你好。”", "然后走了。", "「好的！」", "他笑了。"],
    ),
    (
        "mixed",
        "我喜欢 Python. It is easy to learn. 你呢？Python很好用!我每天都用。",
        ["我喜欢 Python.", "It is easy to learn.", "你呢？", "Python很好用!", "我每天都用。"],
    ),
    (
        "decimals",
        "Pi is about 3.14 and e is 2.718. The ratio is 0.5. It costs $3.50.",
        ["Pi is about 3.14 and e is 2.718.", "The ratio is 0.5.", "It costs $3.50."],
    ),
    (
        "versions",
        "Update to v1.2.3 today. Python 3.11. It is fast.",
        ["Update to v1.2.3 today.", "Python 3.11.", "It is fast."],
    ),
    (
        "titles",
        "Dr. Smith and Mrs. Jones met Prof. Lee vs. St. Clair. They sat down.",
        ["Dr. Smith and Mrs. Jones met Prof. Lee vs. St. Clair.", "They sat down."],
    ),
    (
        "eg_ie",
        "Use a fruit, e.g. an apple. Or a nut, i.e. a seed. (E.g. This.)",
        ["Use a fruit, e.g. an apple.", "Or a nut, i.e. a seed.", "(E.g. This.)"],
    ),
    (
        "us_uk",
        "She left the U.S. for the U.K. last year. Now she is back.",
        ["She left the U.S. for the U.K. last year.", "Now she is back."],
    ),
    (
        "am_lowercase_continues",
        "It opens at 10:30 a.m. tomorrow. See you.",
        ["It opens at 10:30 a.m. tomorrow.", "See you."],
    ),
    ("am_uppercase_ends", "Meet me at 9 a.m. Bring coffee.", ["Meet me at 9 a.m.", "Bring coffee."]),
    ("pm_at_end", "It starts at 7 p.m.", ["It starts at 7 p.m."]),
    (
        "etc",
        "Bring pens, paper, etc. The rest is here. Apples, etc. and more.",
        ["Bring pens, paper, etc.", "The rest is here.", "Apples, etc. and more."],
    ),
    ("number_sign", "Room No. 5 is free. No. I won't go.", ["Room No. 5 is free.", "No.", "I won't go."]),
    (
        "initials",
        "J. R. R. Tolkien wrote it. I loved it. So did I. Really.",
        ["J. R. R. Tolkien wrote it.", "I loved it.", "So did I.", "Really."],
    ),
    ("url", "See https://example.com/a.b?x=1 for details. Thanks!", ["See example.com for details.", "Thanks!"]),
    ("www_domain", "Visit www.python.org. It has docs.", ["Visit python.org.", "It has docs."]),
    (
        "bare_domain_and_email",
        "Go to example.com. Write to help@example.com. Bye.",
        ["Go to example.com.", "Write to help@example.com.", "Bye."],
    ),
    (
        "numbered_list",
        "Steps:\n1. Preheat the oven.\n2. Mix the flour.\n3) Bake it.",
        ["Steps:", "Preheat the oven.", "Mix the flour.", "Bake it."],
    ),
    ("number_mid_line", "I counted to 10. Then I stopped.", ["I counted to 10.", "Then I stopped."]),
    ("bullets", "You need:\n- eggs\n- milk\n* flour\n+ sugar", ["You need:", "eggs", "milk", "flour", "sugar"]),
    (
        "ellipsis",
        "Well... I think so. 嗯…… 好吧。我……不知道。",
        ["Well...", "I think so.", "嗯……", "好吧。", "我……不知道。"],
    ),
    (
        "closing_quotes",
        'He said "Stop!" She stopped. (Really?) Yes. What?! No way!!! Okay.',
        ['He said "Stop!"', "She stopped.", "(Really?)", "Yes.", "What?!", "No way!!!", "Okay."],
    ),
    ("newlines", "First line\n\n\nSecond line\n", ["First line", "Second line"]),
    (
        "markdown",
        "# Recipe\nThis is **very** easy. Try it __now__.\n**Note.** It is *hot*.",
        ["Recipe", "This is very easy.", "Try it now.", "Note.", "It is hot."],
    ),
    (
        "links_and_images",
        "Read [the guide](https://example.com/guide). ![logo](x.png) Done.",
        ["Read the guide.", "Done."],
    ),
    ("inline_code", "Run `make test` now. It is fast.", ["Run make test now.", "It is fast."]),
    (
        "code_fence",
        "Here is code:\n```python\nprint('hi. there')\nx = 1\n```\nThat prints hi.",
        ["Here is code:", "That prints hi."],
    ),
    ("unclosed_code_fence", "Try this:\n```bash\nrm -rf build. Then\nls\n", ["Try this:"]),
    (
        "table_and_rule",
        "| Name | Age |\n|---|---|\n| Tom | 30 |\n---\n> Quoted here.",
        ["Name, Age", "Tom, 30", "Quoted here."],
    ),
    ("emoji", "Great job! 🎉👍🏽 You did it 😀. 🇺🇸 Flags too ❤️", ["Great job!", "You did it.", "Flags too"]),
    ("emoji_only", "🎉🎉 👍 ❤️\n🇺🇸", []),
    ("empty", "", []),
    ("whitespace_only", "  \n\n \t ", []),
    ("no_terminator", "this reply never ends", ["this reply never ends"]),
    (
        "early_first_piece_english",
        LONG_ENGLISH + " Thanks!",
        [
            "When you get a chance tomorrow morning,",
            "please remember to pick up some milk and eggs from the store on the way home.",
            "Thanks!",
        ],
    ),
    ("no_early_piece_after_first", "Sure. " + LONG_ENGLISH, ["Sure.", LONG_ENGLISH]),
    (
        "early_first_piece_before_a_phrase_when_no_clause_comes_in_time",
        "I think that the most important thing to remember about this whole situation is patience, and kindness. Yes.",
        [
            "I think that the most important thing to remember",
            "about this whole situation is patience, and kindness.",
            "Yes.",
        ],
    ),
    (
        "early_first_piece_before_a_phrase_in_a_long_plain_sentence",
        "The primary reason is that the human eye is capable of perceiving light at different wavelengths in different proportions. Next one.",
        [
            "The primary reason is that the human eye is capable of perceiving light",
            "at different wavelengths in different proportions.",
            "Next one.",
        ],
    ),
    (
        "early_first_piece_waits_for_a_clause_just_past_the_limit",
        "I think the most important thing to remember in all of this, is patience and kindness. Yes.",
        [
            "I think the most important thing to remember in all of this,",
            "is patience and kindness.",
            "Yes.",
        ],
    ),
    (
        "early_first_piece_chinese",
        LONG_CHINESE,
        [
            "我们今天先去超市买一些新鲜的水果和蔬菜，然后回家洗干净切好放进冰箱里面保存起来，",
            "晚上再请几位好朋友一起来家里吃饭聊天喝茶，最后大家一起看一部有趣的电影。",
        ],
    ),
    ("short_first_sentence_whole", "Yes, sure, of course. Fine.", ["Yes, sure, of course.", "Fine."]),
    ("cap_chinese_without_punctuation", "中文" * 300, ["中文" * 125, "中文" * 125, "中文" * 50]),
]

SIZED_CASES = [
    (
        "hard_cap_chinese",
        60,
        20,
        "一二三四五六七八九十" * 5,
        ["一二三四五六七八九十" * 2] * 2 + ["一二三四五六七八九十"],
    ),
    (
        "cap_at_last_space",
        60,
        30,
        "alpha beta gamma delta epsilon zeta eta theta iota kappa",
        ["alpha beta gamma delta epsilon", "zeta eta theta iota kappa"],
    ),
    (
        "cap_at_clause_then_space",
        60,
        40,
        "Sure. One two three, four five six seven eight nine ten eleven twelve.",
        ["Sure.", "One two three,", "four five six seven eight nine ten", "eleven twelve."],
    ),
    (
        "early_piece_skips_tiny_clause",
        20,
        250,
        "Well, I guess we could go to the beach, or maybe the park. Or not.",
        ["Well, I guess we could go to the beach,", "or maybe the park.", "Or not."],
    ),
    (
        "early_piece_chinese_min_length",
        10,
        250,
        "我们先去超市，然后回家做饭，好吗？",
        ["我们先去超市，然后回家做饭，", "好吗？"],
    ),
]


@pytest.mark.parametrize("split", SPLITTERS.values(), ids=SPLITTERS.keys())
@pytest.mark.parametrize("text, expected", params(CASES))
def test_pieces(text, expected, split):
    pieces = chunk(text, split)
    assert pieces == expected
    assert all(piece and piece == piece.strip() for piece in pieces)


def random_split(seed: int):
    """Cuts at random places, as a tokenizer with odd merges might: one to four characters at a time."""

    def split(text: str) -> list[str]:
        rng = random.Random(seed)
        tokens, start = [], 0
        while start < len(text):
            end = start + rng.randint(1, 4)
            tokens.append(text[start:end])
            start = end
        return tokens

    return split


CHINESE_SPLITTERS = {"chars": list, "llm_tokens": llm_tokens} | {
    f"random_{seed}": random_split(seed) for seed in (1, 2, 3)
}

# With language="zh" the default limits (60 and 250 English characters) become 20 and 84 Chinese characters,
# and the shortest clause worth an early cut 4 (12 in English).
CHINESE_CASES = [
    (
        "early_first_piece_at_the_clause_before_20",
        LONG_CHINESE,
        [
            "我们今天先去超市买一些新鲜的水果和蔬菜，",
            "然后回家洗干净切好放进冰箱里面保存起来，晚上再请几位好朋友一起来家里吃饭聊天喝茶，最后大家一起看一部有趣的电影。",
        ],
    ),
    (
        "early_first_piece_at_the_first_clause_past_20",
        "明天北京的天气是晴天转多云的，最高气温二十五度，最低气温十五度，适合出门。",
        ["明天北京的天气是晴天转多云的，", "最高气温二十五度，最低气温十五度，适合出门。"],
    ),
    (
        "clause_shorter_than_4_is_not_a_first_piece",
        "好的，我来帮你查一下明天北京的天气情况和空气质量。",
        ["好的，我来帮你查一下明天北京的天气情况和空气质量。"],
    ),
    ("short_sentences_whole", "你好！今天想聊点什么？", ["你好！", "今天想聊点什么？"]),
    (
        "acronym_and_digits_inside",
        "我们用GPS导航，大概需要30分钟才能到达目的地附近的停车场。然后步行。",
        ["我们用GPS导航，", "大概需要30分钟才能到达目的地附近的停车场。", "然后步行。"],
    ),
    (
        "no_comma_waits_for_the_sentence_end",
        "首先打开设置然后选择网络和互联网再点击无线网络最后输入密码就可以连接了。好的。",
        ["首先打开设置然后选择网络和互联网再点击无线网络最后输入密码就可以连接了。", "好的。"],
    ),
    ("cap_at_84_without_punctuation", "中文" * 100, ["中文" * 42, "中文" * 42, "中文" * 16]),
    ("units_and_dates_kept", "今天是2024年1月15日，气温-5℃。", ["今天是2024年1月15日，气温-5℃。"]),
    (
        "english_sentences_inside",
        "我喜欢 Python. It is easy to learn. 你呢？",
        ["我喜欢 Python.", "It is easy to learn.", "你呢？"],
    ),
    ("ellipsis_and_markdown", "嗯……让我想想。**好吧！**", ["嗯……让我想想。", "好吧！"]),
]


@pytest.mark.parametrize("split", CHINESE_SPLITTERS.values(), ids=CHINESE_SPLITTERS.keys())
@pytest.mark.parametrize("text, expected", params(CHINESE_CASES))
def test_chinese_pieces(text, expected, split):
    assert chunk(text, split, language="zh") == expected


def test_chinese_rules_cut_a_long_first_sentence_sooner_than_english_rules():
    english_rules, chinese_rules = chunk(LONG_CHINESE, list), chunk(LONG_CHINESE, list, language="zh")

    assert len(chinese_rules[0]) == 20 < len(english_rules[0]) == 40


@pytest.mark.parametrize(
    "english_chars, language, chars", [(60, "en", 60), (60, "zh", 20), (250, "zh", 84), (12, "zh", 4), (60, "fr", 60)]
)
def test_chars_for_language(english_chars, language, chars):
    assert chars_for_language(english_chars, language) == chars


@pytest.mark.parametrize("split", SPLITTERS.values(), ids=SPLITTERS.keys())
@pytest.mark.parametrize("first, maximum, text, expected", params(SIZED_CASES))
def test_piece_sizes(first, maximum, text, expected, split):
    assert chunk(text, split, first_piece_chars=first, max_piece_chars=maximum) == expected


EMITTED_ON_NEXT_CHAR = [
    ("english", "Hello there.", " ", "Hello there."),
    ("question_run", "Really?!", " ", "Really?!"),
    ("closing_quote", 'He said "Stop!"', " ", 'He said "Stop!"'),
    ("chinese", "你好。", "我", "你好。"),
    ("chinese_closing_quote", "他说：“你好。”", "然", "他说：“你好。”"),
    ("ascii_before_cjk", "Python很好用!", "我", "Python很好用!"),
    ("newline", "First line", "\n", "First line"),
    ("am_before_capital", "Meet me at 9 a.m. ", "B", "Meet me at 9 a.m."),
    ("early_first_piece", LONG_ENGLISH[:60], LONG_ENGLISH[60], "When you get a chance tomorrow morning,"),
]


@pytest.mark.parametrize("prefix, next_char, expected", params(EMITTED_ON_NEXT_CHAR))
def test_piece_is_emitted_as_soon_as_the_next_char_arrives(prefix, next_char, expected):
    chunker = SentenceChunker()
    assert [chunker.feed(char) for char in prefix] == [[]] * len(prefix)
    assert chunker.feed(next_char) == [expected]


HELD_BACK = [
    ("abbreviations", "Dr. Smith and Mr. Jones, e.g. in the U.S. "),
    ("decimals_and_versions", "Pi is 3.14 and v1.2.3 "),
    ("url", "Go to https://example.com/a.b?x=1 "),
    ("list_number", "1. Preheat the oven "),
    ("time", "Open at 10:30 a.m. tomorrow "),
    ("initials", "J. R. R. Tolkien "),
    ("code_fence", "```python\nprint('hi. there')\n"),
]


@pytest.mark.parametrize("text", params(HELD_BACK))
def test_no_piece_before_a_real_end(text):
    chunker = SentenceChunker()
    assert [piece for char in text for piece in chunker.feed(char)] == []


def test_fence_markers_split_over_tokens_are_dropped_with_the_code():
    chunker = SentenceChunker()
    tokens = ["Look:\n", "``", "`python\n", "x = 1. Then y", "\n`", "``\n", "Done", ". Bye", "."]
    pieces = [piece for token in tokens for piece in chunker.feed(token)]
    assert pieces + chunker.flush() == ["Look:", "Done.", "Bye."]


def test_reset_forgets_text_fence_and_first_piece():
    chunker = SentenceChunker()
    assert chunker.feed("Hello. ") == ["Hello."]
    assert chunker.feed("a fence ends the piece ```python\nx = 1") == ["a fence ends the piece"]
    chunker.reset()
    assert chunker.feed("New reply. ") == ["New reply."]
    chunker.reset()
    early = [piece for char in LONG_ENGLISH for piece in chunker.feed(char)]
    assert early == ["When you get a chance tomorrow morning,"]


def test_flush_starts_the_next_reply():
    chunker = SentenceChunker()
    assert chunker.feed("One. Two") == ["One."]
    assert chunker.flush() == ["Two"]
    assert chunker.flush() == []
    assert chunker.feed("Three. ") == ["Three."]


SPEAKABLE_CASES = [
    ("plain", "Hello, world!", "Hello, world!"),
    ("bold", "**Bold** and __strong__ text", "Bold and strong text"),
    ("emphasis", "*em* and _em_ too", "em and em too"),
    ("stray_stars_from_split_bold", "**Important note.", "Important note."),
    ("snake_case", "call my_var_name now", "call my_var_name now"),
    ("multiplication", "2*3 = 6 and 2 * 3", "2*3 = 6 and 2 * 3"),
    ("strikethrough", "~~old~~ new", "old new"),
    ("heading", "## Title", "Title"),
    ("bullet_dash", "- item", "item"),
    ("bullet_star", "* item", "item"),
    ("bullet_plus", "+ item", "item"),
    ("numbered_dot", "1. First step", "First step"),
    ("numbered_paren", "2) Second step", "Second step"),
    ("inline_code", "Use `pip install x` here", "Use pip install x here"),
    ("blockquote", "> quoted text", "quoted text"),
    ("table_row", "| a | b |", "a, b"),
    ("table_divider", "|---|:---:|", ""),
    ("horizontal_rule", "---", ""),
    ("link", "[Python](https://python.org) rocks", "Python rocks"),
    ("image", "![a cat](cat.png) Look", "Look"),
    ("url_to_domain", "Get it at https://www.python.org/downloads/ today", "Get it at python.org today"),
    ("www_url", "See www.example.com/docs.", "See example.com."),
    ("url_with_query", "Open (https://example.com/a.b?x=1).", "Open (example.com)."),
    ("email_kept", "Mail me@example.com", "Mail me@example.com"),
    ("fenced_code", "before ```x = 1``` after", "before after"),
    ("unclosed_fence", "before ```python\nx = 1", "before"),
    ("emoji", "Nice 😀 work 👍🏽!", "Nice work!"),
    ("zwj_family", "Family 👨\u200d👩\u200d👧 time", "Family time"),
    ("flag_and_keycap", "🇺🇸 1️⃣ one", "one"),
    ("symbols_kept", "$5, €3, £2, ¥100, 50%, 20°C", "$5, €3, £2, ¥100, 50%, 20°C"),
    ("celsius_sign_kept", "气温-5℃，体温98℉", "气温-5℃，体温98℉"),
    ("chinese_kept", "你好，世界！", "你好，世界！"),
    ("punctuation_only", "... !?", ""),
    ("whitespace", "  a \n\t b  ", "a b"),
    ("emoji_only", "🎉✨", ""),
]


@pytest.mark.parametrize("text, expected", params(SPEAKABLE_CASES))
def test_speakable(text, expected):
    assert speakable(text) == expected

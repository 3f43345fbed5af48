"""Manifest views of the mix stage: `text`, `text_rejects`, `mixture_parts` (rows as written) and
`mixture` (every row with its messages)."""

from __future__ import annotations

from vora_core.manifest import View, empty_select, register_view

MESSAGES = "STRUCT(role VARCHAR, content VARCHAR)[]"


def _complete(columns: dict[str, str], src: str) -> str:
    """`src` with every one of `columns`, NULL where its files lack one (files an older version wrote: the
    views must open so that the stage can rebuild them)."""
    return f"(SELECT * FROM ({empty_select(columns)}) UNION ALL BY NAME SELECT * FROM {src})"


TEXT_COLUMNS = {"sample_id": "VARCHAR", "source": "VARCHAR", "idx": "BIGINT", "image": "VARCHAR",
                "messages": MESSAGES, "chars": "INTEGER"}
register_view(View(
    name="text",
    pattern="text/*/part-*.parquet",
    select=f"SELECT {', '.join(TEXT_COLUMNS)} FROM " + _complete(TEXT_COLUMNS, "{src}"),
    empty=empty_select(TEXT_COLUMNS),
))
register_view(View(
    name="text_rejects",
    pattern="text/*/rejects.parquet",
    select="SELECT source, row, id, reason, detail FROM {src}",
    empty=empty_select({"source": "VARCHAR", "row": "BIGINT", "id": "VARCHAR", "reason": "VARCHAR",
                        "detail": "VARCHAR"}),
))
# A mixture part's row references its text (nothing is copied: at paper scale copying 30M captions and
# 6.4M conversations would be nearly all of the mix stage's time and disk): a text or VQA row by
# `text_idx` (its `idx` in text/<source>), a caption row by `caption_from` (recap | alt: the image's
# recaption or its alt text) and its `prompt`. `messages` holds a conversation inline instead (NULL in
# the rows the mix stage writes; a mixture made elsewhere may carry them). `chars`: the length of the
# row's text, for token estimates.
MIXTURE_COLUMNS = {"sample_id": "VARCHAR", "kind": "VARCHAR", "source": "VARCHAR", "image": "VARCHAR",
                   "messages": MESSAGES, "weight_source": "VARCHAR", "text_idx": "BIGINT", "prompt": "VARCHAR",
                   "caption_from": "VARCHAR", "chars": "INTEGER"}
IMAGE_TURN_PREFIX = "<image>\n"  # a caption sample's user turn: this, then its prompt


def complete_parts_sql(src: str) -> str:
    """`src` (a FROM item over mixture parts) with every MIXTURE_COLUMNS column, NULL where the parts
    lack it: a mixture made elsewhere may hold only `sample_id, kind, source, image, messages`."""
    return _complete(MIXTURE_COLUMNS, src)


def resolved_sql(parts: str, columns: str = "") -> str:
    """The rows of `parts` (a FROM item holding mixture part columns, aliased `m`) with their messages,
    built from the `text`, `captions` and `images` views. `columns`: more select items (over `m`, `i` =
    images)."""
    return f"""
        SELECT m.sample_id, m.kind, m.source, m.image,
               coalesce(m.messages, t.messages, CASE WHEN m.caption_from IS NOT NULL THEN [
                   struct_pack(role := 'user', content := '{IMAGE_TURN_PREFIX}' || m.prompt),
                   struct_pack(role := 'assistant', content := CASE m.caption_from WHEN 'recap' THEN c.caption
                                                                   ELSE trim(i.alt_text) END)] END) AS messages,
               m.weight_source, m.text_idx, m.prompt, m.caption_from, m.chars{columns}
        FROM {parts}
        LEFT JOIN text t ON t.source = m.source AND t.idx = m.text_idx
        LEFT JOIN images i ON i.sample_id = m.image
        LEFT JOIN captions c ON m.caption_from = 'recap' AND c.sample_id = m.image"""


register_view(View(
    name="mixture_parts",
    pattern="mixture/*/part-*.parquet",
    select=r"""
        SELECT regexp_extract(filename, '(?:^|/)mixture/([^/]+)/[^/]+\.parquet$', 1) AS stage, * EXCLUDE (filename)
        FROM """ + complete_parts_sql("{src}"),
    empty=empty_select({"stage": "VARCHAR", **MIXTURE_COLUMNS}),
))
register_view(View(
    name="mixture",
    select=resolved_sql("mixture_parts m", ", m.stage"),
    empty="",
))

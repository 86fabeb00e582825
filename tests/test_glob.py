"""Pachyderm glob semantics: which paths match, and which datum each file belongs to."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarmsieve.pps.glob import Glob, compile_glob

TREE = [
    "/readme.txt",
    "/cam-1/a.jpg",
    "/cam-1/b.png",
    "/cam-1/night/c.jpg",
    "/cam-2/d.jpg",
    "/cam-10/e.jpg",
    "/x.jpg/inner.txt",  # a directory whose name looks like a file
]


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "expected"),
    [
        # "/" is the root only.
        ("/", "/", True, True),
        ("/", "/cam-1", True, False),
        # `*` stays inside one segment, matches files and directories alike.
        ("/*", "/cam-1", True, True),
        ("/*", "/readme.txt", False, True),
        ("/*", "/cam-1/a.jpg", False, False),
        ("/*", "/", True, False),
        ("/*.jpg", "/cam-1/a.jpg", False, False),
        ("/*/*", "/cam-1/a.jpg", False, True),
        ("/*/*", "/cam-1/night", True, True),
        ("/*/*", "/readme.txt", False, False),
        # Literal prefixes.
        ("/cam-1/*", "/cam-1/a.jpg", False, True),
        ("/cam-1/*", "/cam-2/d.jpg", False, False),
        ("/cam-1", "/cam-1", True, True),
        ("/cam-1/", "/cam-1", True, True),  # a trailing "/" names the same path
        # `?` is exactly one character.
        ("/cam-?", "/cam-1", True, True),
        ("/cam-?", "/cam-10", True, False),
        ("/cam-??", "/cam-10", True, True),
        # Classes.
        ("/cam-[12]", "/cam-2", True, True),
        ("/cam-[12]", "/cam-3", True, False),
        ("/cam-[0-9]", "/cam-7", True, True),
        ("/cam-[!1]", "/cam-1", True, False),
        ("/cam-[!1]", "/cam-2", True, True),
        ("/cam-[^1]", "/cam-2", True, True),
        ("/[]]x", "/]x", False, True),
        # Alternatives, also across segments.
        ("/{cam-1,cam-2}/*.jpg", "/cam-2/d.jpg", False, True),
        ("/{cam-1,cam-2}/*.jpg", "/cam-10/e.jpg", False, False),
        ("/{cam-1/night,cam-2}/*", "/cam-1/night/c.jpg", False, True),
        ("/cam-{1,{2,3}}", "/cam-3", True, True),
        ("/a{,b}", "/a", False, True),
        # Groups (Pachyderm captures for join/group) do not change matching.
        ("/STOREID(*).txt", "/STOREID7.txt", False, True),
        # Escapes.
        ("/\\*", "/*", False, True),
        ("/\\*", "/a", False, False),
        # `**`: files only, at any depth.
        ("/**", "/readme.txt", False, True),
        ("/**", "/cam-1/night/c.jpg", False, True),
        ("/**", "/cam-1", True, False),
        ("/**", "/", True, False),
        ("/**/*.jpg", "/a.jpg", False, True),  # a middle `**` may match no segment
        ("/**/*.jpg", "/cam-1/night/c.jpg", False, True),
        ("/**/*.jpg", "/x.jpg", True, False),
        ("/cam-1/**", "/cam-1", False, False),  # a trailing `**` needs at least one segment
        ("/cam-1/**", "/cam-1/night/c.jpg", False, True),
        # `*` matches dotfiles, like Pachyderm.
        ("/*", "/.hidden", False, True),
    ],
)
def test_matches(pattern: str, path: str, is_dir: bool, expected: bool) -> None:
    assert compile_glob(pattern).matches(path, is_dir=is_dir) is expected


def test_matches_infers_directories_from_trailing_slash() -> None:
    g = compile_glob("/**")
    assert g.matches("/cam-1/a.jpg")
    assert not g.matches("/cam-1/")
    assert not g.matches("/")


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("/", {"/": sorted(TREE)}),
        (
            "/*",
            {
                "/cam-1": ["/cam-1/a.jpg", "/cam-1/b.png", "/cam-1/night/c.jpg"],
                "/cam-10": ["/cam-10/e.jpg"],
                "/cam-2": ["/cam-2/d.jpg"],
                "/readme.txt": ["/readme.txt"],
                "/x.jpg": ["/x.jpg/inner.txt"],
            },
        ),
        (
            "/*/*",
            {
                "/cam-1/a.jpg": ["/cam-1/a.jpg"],
                "/cam-1/b.png": ["/cam-1/b.png"],
                "/cam-1/night": ["/cam-1/night/c.jpg"],
                "/cam-10/e.jpg": ["/cam-10/e.jpg"],
                "/cam-2/d.jpg": ["/cam-2/d.jpg"],
                "/x.jpg/inner.txt": ["/x.jpg/inner.txt"],
            },
        ),
        ("/**", {f: [f] for f in sorted(TREE)}),
        (
            "/**/*.jpg",
            {f: [f] for f in ["/cam-1/a.jpg", "/cam-1/night/c.jpg", "/cam-10/e.jpg", "/cam-2/d.jpg"]},
        ),
        (
            "/cam-1/*",
            {
                "/cam-1/a.jpg": ["/cam-1/a.jpg"],
                "/cam-1/b.png": ["/cam-1/b.png"],
                "/cam-1/night": ["/cam-1/night/c.jpg"],
            },
        ),
        ("/cam-?", {"/cam-1": ["/cam-1/a.jpg", "/cam-1/b.png", "/cam-1/night/c.jpg"], "/cam-2": ["/cam-2/d.jpg"]}),
        ("/*.jpg", {"/x.jpg": ["/x.jpg/inner.txt"]}),  # a matching directory is one datum
        ("/nothing/*", {}),
        # Nested matches: files belong to the outer datum only.
        ("/{cam-1,cam-1/night}", {"/cam-1": ["/cam-1/a.jpg", "/cam-1/b.png", "/cam-1/night/c.jpg"]}),
    ],
)
def test_group(pattern: str, expected: dict[str, list[str]]) -> None:
    grouped = compile_glob(pattern).group(TREE)
    assert grouped == expected
    assert list(grouped) == sorted(grouped)


def test_group_dedupes_and_sorts() -> None:
    assert compile_glob("/*").group(["/b/2", "/a/1", "/b/1", "/b/2"]) == {"/a": ["/a/1"], "/b": ["/b/1", "/b/2"]}


@pytest.mark.parametrize(
    ("pattern", "file_path", "root"),
    [
        ("/", "/a/b/c", "/"),
        ("/*", "/a/b/c", "/a"),
        ("/*/*", "/a/b/c", "/a/b"),
        ("/*/*", "/a", None),  # shallower than the glob: in no datum
        ("/**", "/a/b/c", "/a/b/c"),
        ("/a/*", "/b/c", None),
        ("/*/b", "/a/b/c", "/a/b"),
    ],
)
def test_datum_root(pattern: str, file_path: str, root: str | None) -> None:
    assert compile_glob(pattern).datum_root(file_path) == root


def test_datum_root_of_deep_path() -> None:
    deep = "/" + "/".join(f"d{i}" for i in range(500)) + "/f.jpg"
    assert compile_glob("/*").datum_root(deep) == "/d0"
    assert compile_glob("/**").datum_root(deep) == deep
    assert compile_glob("/*/*/*").datum_root(deep) == "/d0/d1/d2"


@pytest.mark.parametrize("bad", ["a/b", "", "/a//b", "/"])
def test_datum_root_rejects_bad_file_paths(bad: str) -> None:
    with pytest.raises(ValueError):
        compile_glob("/*").datum_root(bad)


def test_matches_rejects_relative_path() -> None:
    with pytest.raises(ValueError, match="absolute"):
        compile_glob("/*").matches("a")


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("*", "must start with '/'"),
        ("", "must start with '/'"),
        ("cam/*", "must start with '/'"),
        ("/[ab", "unbalanced '\\['"),
        ("/a{b,c", "unbalanced '\\{'"),
        ("/a}", "unbalanced '\\}'"),
        ("/a(b", "unbalanced '\\('"),
        ("/a)b", "unbalanced '\\)'"),
        ("/a**", "whole path segment"),
        ("/***", "whole path segment"),
        ("/a//b", "empty path segment"),
        ("/a\\", "lone"),
        ("/[a/b]", "cannot contain '/'"),
        ("/[z-a]", "reversed range"),
        ("/../x", "'..'"),
        ("/" + "{a,b}" * 9, "alternatives"),
    ],
)
def test_malformed_patterns(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_glob(pattern)


def test_glob_value_semantics() -> None:
    g = compile_glob("/*")
    assert g.pattern == "/*"
    assert g == Glob("/*", []) and hash(g) == hash("/*")
    assert repr(g) == "Glob('/*')"


# --------------------------------------------------------------------------------------------------
# Properties against a brute-force reference.

NAMES = ["a", "b", "ab", "x.jpg", "c-1"]
SEGMENT_PATTERNS = ["*", "?", "a", "a*", "*.jpg", "[ab]", "[!a]*", "c-?", "x.jpg", "{a,b}", "{a,x.jpg}", "**"]


@st.composite
def trees(draw: st.DrawFn) -> list[str]:
    """A consistent file tree: no path is both a file and a directory."""
    raw = draw(st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4), min_size=1, max_size=12))
    files: list[str] = []
    for parts in sorted(raw, key=len):
        path = "/" + "/".join(parts)
        taken = any(path == f or path.startswith(f + "/") or f.startswith(path + "/") for f in files)
        if not taken:
            files.append(path)
    return files


patterns = st.one_of(
    st.just("/"),
    st.lists(st.sampled_from(SEGMENT_PATTERNS), min_size=1, max_size=4).map(lambda segs: "/" + "/".join(segs)),
)


def _ancestors_or_self(file_path: str) -> list[str]:
    parts = file_path.strip("/").split("/")
    return ["/" + "/".join(parts[:k]) for k in range(len(parts) + 1)]


def _reference_group(glob: Glob, files: list[str]) -> dict[str, list[str]]:
    """Enumerate every directory and file, test `matches`, take each file's shortest matching ancestor."""
    directories = {a for f in files for a in _ancestors_or_self(f)[:-1]}
    matching = {d for d in directories if glob.matches(d, is_dir=True)}
    matching |= {f for f in files if glob.matches(f, is_dir=False)}
    groups: dict[str, list[str]] = {}
    for f in files:
        root = next((a for a in _ancestors_or_self(f) if a in matching), None)
        if root is not None:
            groups.setdefault(root, []).append(f)
    return {root: sorted(groups[root]) for root in sorted(groups)}


@settings(max_examples=300, deadline=None)
@given(pattern=patterns, files=trees())
def test_group_agrees_with_brute_force(pattern: str, files: list[str]) -> None:
    glob = compile_glob(pattern)
    grouped = glob.group(files)
    assert grouped == _reference_group(glob, files)
    # Every file is in at most one datum, and each datum root is an ancestor-or-self of its files.
    members = [f for fs in grouped.values() for f in fs]
    assert len(members) == len(set(members))
    for root, fs in grouped.items():
        assert all(root in _ancestors_or_self(f) for f in fs)
    # datum_root agrees with group.
    for f in files:
        root = glob.datum_root(f)
        assert (root is None and f not in members) or f in grouped[root]


@settings(max_examples=300, deadline=None)
@given(
    segments=st.lists(st.sampled_from([s for s in SEGMENT_PATTERNS if "{" not in s and s != "**"]), max_size=4),
    path=st.lists(st.sampled_from(NAMES), max_size=4),
)
def test_matches_agrees_with_fnmatch_per_segment(segments: list[str], path: list[str]) -> None:
    """Without `**` and braces, a glob is fnmatch applied segment by segment."""
    glob = compile_glob("/" + "/".join(segments))
    expected = len(segments) == len(path) and all(fnmatchcase(p, s) for p, s in zip(path, segments, strict=True))
    for is_dir in (True, False):
        assert glob.matches("/" + "/".join(path), is_dir=is_dir) is expected


# ---- capture groups (join_on / group_by) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "groups"),
    [
        ("/(*)/(*).jpg", "/cam-1/0001.jpg", ("cam-1", "0001")),
        ("/STOREID(*).txt", "/STOREID7.txt", ("7",)),
        ("/*_STOREID(*).txt", "/42_STOREID7.txt", ("7",)),
        ("/(?)(*)", "/abc", ("a", "bc")),
        ("/([a-c]*)", "/beta", ("beta",)),
        ("/{x,(y*)}", "/yz", ("yz",)),
        ("/{x,(y*)}", "/x", ()),  # groups are those of the alternative that matched
        ("/*", "/plain", ()),
        ("/(*)", "/a/b", None),  # no match at that depth
    ],
)
def test_captures(pattern: str, path: str, groups: tuple[str, ...] | None) -> None:
    assert compile_glob(pattern).captures(path) == groups


def test_expand_fills_dollar_groups_like_pachyderm() -> None:
    glob = compile_glob("/(*)/(*).jpg")
    assert glob.expand("$1", "/cam-1/x.jpg") == "cam-1"
    assert glob.expand("${2}-$1", "/cam-1/x.jpg") == "x-cam-1"
    assert glob.expand("$3", "/cam-1/x.jpg") == ""  # a group that does not exist is empty


def test_groups_do_not_change_what_matches() -> None:
    with_groups, without = compile_glob("/(cam-*)/(*)"), compile_glob("/cam-*/*")
    for path in ["/cam-1/a", "/cam-1/a/b", "/other/a", "/cam-2/x/y/z"]:
        assert with_groups.datum_root(path) == without.datum_root(path)

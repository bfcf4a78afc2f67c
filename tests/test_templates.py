import pytest

from avatarbatch.manifest.templates import TemplateError, output_name, placeholders, render


def test_placeholders_are_filled_from_vars() -> None:
    assert render("voices/{lang}.mp3", {"lang": "es"}) == "voices/es.mp3"


def test_double_braces_are_literal() -> None:
    assert render("{{lang}} {lang}", {"lang": "de"}) == "{lang} de"


def test_format_spec_pads_the_index() -> None:
    assert render("clip-{index:03d}", {"index": 7}) == "clip-007"


def test_unknown_placeholder_names_what_is_known() -> None:
    with pytest.raises(
        TemplateError, match=r"unknown placeholder \{lng\} \(known here: index, lang\)"
    ):
        render("{lng}", {"lang": "es", "index": 1})


def test_attribute_access_is_not_python_format() -> None:
    with pytest.raises(TemplateError, match="unknown placeholder"):
        render("{lang.__class__}", {"lang": "es"})


def test_bad_format_spec_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="bad format"):
        render("{index:zz}", {"index": 1})


def test_huge_expansion_is_refused() -> None:
    with pytest.raises(TemplateError, match="expands to"):
        render("{index:>1000000}", {"index": 1})


def test_placeholders_lists_names_in_order() -> None:
    assert placeholders("{a}-{b:02d}-{{c}}") == ["a", "b"]


def test_output_name_numbers_several_results() -> None:
    names = output_name("{id}.{ext}", {"id": "host", "ext": "mp4"}, 3)
    assert names == ["host-1.mp4", "host-2.mp4", "host-3.mp4"]


def test_output_name_keeps_an_explicit_result_number() -> None:
    assert output_name("{id}_take{n}.{ext}", {"id": "a", "ext": "mov"}, 2) == [
        "a_take1.mov",
        "a_take2.mov",
    ]


def test_output_name_may_use_subfolders() -> None:
    assert output_name("{lang}/{id}.{ext}", {"lang": "es", "id": "a", "ext": "mp4"}, 1) == [
        "es/a.mp4"
    ]


@pytest.mark.parametrize(
    ("template", "values"),
    [
        ("../{id}.{ext}", {}),
        ("/etc/{id}", {}),
        ("{lang}/{id}.{ext}", {"lang": ".."}),
        ("{lang}/{id}.{ext}", {"lang": "."}),
        ("a//{id}", {}),
        (".hidden-{id}", {}),
        ("{id}\x00.mp4", {}),
        ("a\\..\\{id}", {}),
    ],
)
def test_output_names_cannot_leave_the_videos_folder(template: str, values: dict[str, str]) -> None:
    with pytest.raises(TemplateError):
        output_name(template, {"id": "job", "ext": "mp4", **values}, 1)

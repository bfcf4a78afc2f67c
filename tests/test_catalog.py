from decimal import Decimal

import pytest

from avatarbatch import catalog


@pytest.mark.parametrize(
    ("name", "model_id"),
    [
        ("standard", "klingai:avatar@2.0-standard"),
        ("PRO", "klingai:avatar@2.0-pro"),
        (" klingai:avatar@2.0-pro ", "klingai:avatar@2.0-pro"),
        ("klingai:avatar@2.0-standard", "klingai:avatar@2.0-standard"),
    ],
)
def test_models_are_found_by_id_or_alias_in_any_case(name: str, model_id: str) -> None:
    model = catalog.find_model(name)
    assert model is not None and model.id == model_id


def test_unknown_model_name_is_none() -> None:
    assert catalog.find_model("klingai:avatar@1.0") is None


@pytest.mark.parametrize(
    ("model", "seconds", "expected"),
    [
        # Runware's own published examples (RUNWARE_PROTOCOL.md §8).
        (catalog.STANDARD, 12.266, "0.53970"),
        (catalog.STANDARD, 17.333, "0.76265"),
        (catalog.STANDARD, 19.2, "0.84480"),
        (catalog.PRO, 13.866, "1.20634"),
        (catalog.PRO, 22.4, "1.94880"),
        (catalog.STANDARD, 60, "2.64000"),
        (catalog.PRO, 300, "26.10000"),
        # Billing truncates to whole milliseconds.
        (catalog.STANDARD, 2.0009, "0.08800"),
    ],
)
def test_cost_matches_runware_billing(
    model: catalog.AvatarModel, seconds: float, expected: str
) -> None:
    assert model.cost(seconds) == Decimal(expected)


def test_cost_scales_with_number_of_results() -> None:
    assert catalog.PRO.cost(10, results=3) == Decimal("2.61")

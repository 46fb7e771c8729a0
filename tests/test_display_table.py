"""``display.table``: the Markdown tables the chapters show instead of printed text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kexue.experiments.display import Markdown, table


def _lines(md: Markdown) -> list[str]:
    return md.text.splitlines()


def test_mapping_rows_keep_column_order_and_format_numbers():
    md = table([{"model": "GP", "F1": 0.91234, "steps": 120}, {"model": "CRF", "F1": 0.9, "steps": 80}])
    assert isinstance(md, Markdown) and md._repr_markdown_() == md.text
    assert _lines(md) == ["| model | F1 | steps |", "|---|---|---|",
                          "| GP | 0.912 | 120 |", "| CRF | 0.900 | 80 |"]


def test_sequence_rows_need_columns_and_a_dict_shows_as_two_columns():
    with pytest.raises(ValueError, match="columns must name"):
        table([("a", 1)])
    md = table({"device": "cpu", "threads": 1}.items(), ["", "value"])
    assert _lines(md)[2:] == ["| device | cpu |", "| threads | 1 |"]


def test_small_and_huge_values_never_show_as_zero_and_formats_win():
    md = table([{"err": 3.2e-12, "n": 2.5e7, "x": 0.0, "ratio": 1.23456}], digits=3,
               formats={"ratio": "x{:.2f}"})
    assert _lines(md)[2] == "| 3.20e-12 | 2.50e+07 | 0.000 | x1.23 |"


def test_scalars_of_numpy_and_torch_none_bools_and_pipes():
    md = table([{"a": np.float64(0.5), "b": torch.tensor(2.0), "c": None, "d": True, "e": "x|y"}])
    assert _lines(md)[2] == "| 0.500 | 2.000 | — | yes | x\\|y |"


def test_caption_goes_under_the_table():
    assert table([{"a": 1}], caption="_n = 1_").text.endswith("| 1 |\n\n_n = 1_")


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: table([{"a": 1}, {"b": 2}]), ValueError, r"lack column\(s\) \['a'\]"),
        (lambda: table([(1, 2)], ["a"]), ValueError, "do not have 1 values"),
        (lambda: table([{"a": 1}, (1,)]), TypeError, "all mappings"),
        (lambda: table([{"a": 1}], formats={"b": "{}"}), ValueError, "formats names"),
        (lambda: table([{"a": 1}], digits=-1), ValueError, "digits"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_no_rows_say_none():
    assert table([]).text == "_none_"

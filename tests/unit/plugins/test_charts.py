from __future__ import annotations

import re

import pytest

from airflow_provider_hlml.plugins import charts


class TestLineChart:
    def test_points_lines_and_escaped_labels(self) -> None:
        svg = str(charts.line_chart(["a<b", "c", "d"], {"acc & f1": [0.5, None, 0.9]}, y_label="score"))
        assert svg.startswith("<svg")
        assert svg.count("<circle") == 2
        assert "<polyline" in svg
        assert "a&lt;b" in svg
        assert "acc &amp; f1" in svg
        assert "<b" not in svg.replace("<br", "")

    def test_higher_value_is_drawn_higher(self) -> None:
        svg = str(charts.line_chart(["1", "2"], {"m": [1.0, 3.0]}))
        ys = [float(y) for y in re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)"', svg)]
        assert ys[1] < ys[0]

    def test_shares_on_a_percent_axis(self) -> None:
        svg = str(charts.line_chart(["d1", "d2", "d3"], {"human": [0.25, None, 1.0]}, percent=True))
        ticks = re.findall(r'class="tick">(\d+%)</text>', svg)
        assert ticks == ["0%", "25%", "50%", "75%", "100%"]
        assert "<title>human: 25%</title>" in svg
        ys = [float(y) for y in re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)"', svg)]
        grid = [float(y) for y in re.findall(r'<line x1="[\d.]+" x2="[\d.]+" y1="([\d.]+)"', svg)]
        assert ys == [grid[1], grid[4]]  # 25% and 100% sit on their grid lines

    def test_no_data(self) -> None:
        assert "No data yet" in str(charts.line_chart([], {}))
        assert "No data yet" in str(charts.line_chart(["a"], {"m": [None]}))


class TestStackedBarChart:
    def test_bar_heights_are_proportional(self) -> None:
        svg = str(charts.stacked_bar_chart(["d1", "d2"], {"approved": [2, 4], "rejected": [0, 0]}))
        heights = [
            float(h) for h in re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"', svg)
        ]
        bars, legend = heights[:2], heights[2:]
        assert legend == [10.0, 10.0]  # one swatch per stack
        assert bars[1] == pytest.approx(2 * bars[0], abs=0.2)

    def test_named_colours(self) -> None:
        svg = str(
            charts.stacked_bar_chart(["d1"], {"approved": [1], "rejected": [1]}, colors=charts.OUTCOME_COLORS)
        )
        assert svg.count('fill="#16a34a"') == 2  # bar and legend swatch
        assert svg.count('fill="#dc2626"') == 2

    def test_decision_source_colours(self) -> None:
        stacks = {"auto-approved": [1], "auto-rejected": [1], "by a person": [1]}
        svg = str(charts.stacked_bar_chart(["d1"], stacks, colors=charts.DECISION_COLORS))
        for color in charts.DECISION_COLORS.values():
            assert svg.count(f'fill="{color}"') == 2

    def test_all_zero_is_empty(self) -> None:
        assert "No data yet" in str(charts.stacked_bar_chart(["d1"], {"approved": [0]}))

"""MechanismSelector: the design's default rules, the rule grammar (precedence, parentheses,
numbers), errors that point at the bad token, and unknown mechanisms."""
import pytest

from rerank.selector import MechanismSelector, RuleError, parse_condition


def ctx(seq_len=0, batch_size=1, hierarchical=False, graph=False, moe=False, threshold=8192):
    return {"seq_len": seq_len, "batch_size": batch_size, "long_sequence_threshold": threshold,
            "hierarchical": hierarchical, "graph": graph, "moe": moe}


@pytest.mark.parametrize("kwargs, expected", [
    ({"seq_len": 40000}, "longformer-attention"),
    ({"seq_len": 40000, "is_hierarchical": True}, "longformer-attention"),   # first match wins
    ({"seq_len": 9000}, "linear-attention"),
    ({"seq_len": 8192}, "flash-attention-v2"),                             # > is strict
    ({"seq_len": 100, "is_hierarchical": True}, "hierarchical-cross-attention"),
    ({"seq_len": 100, "has_graph_structure": True}, "star-attention"),
    ({"seq_len": 100, "is_moe": True}, "moe-attention"),
    ({"seq_len": 100, "has_graph_structure": True, "is_moe": True}, "star-attention"),
    ({"seq_len": 512}, "flash-attention-v2"),
])
def test_default_rules(kwargs, expected):
    selector = MechanismSelector()
    assert selector.select(**kwargs) == expected
    assert selector.explain(**kwargs).mechanism == expected


def test_threshold_and_fallback_are_settings():
    selector = MechanismSelector(long_sequence_threshold=1000, fallback_mechanism="memory-attention",
                                 default_mechanism="cross-attention")
    assert selector.select(seq_len=1001) == "memory-attention"
    assert selector.select(seq_len=999) == "cross-attention"
    why = selector.explain(seq_len=1001)
    assert why.rule == 1 and "seq_len > long_sequence_threshold" in why.reason


@pytest.mark.parametrize("condition, context, expected", [
    ("seq_len > 10 and batch_size >= 4", ctx(11, 4), True),
    ("seq_len > 10 and batch_size >= 4", ctx(11, 3), False),
    ("graph or moe and hierarchical", ctx(graph=True), True),        # and binds tighter
    ("graph or moe and hierarchical", ctx(moe=True), False),
    ("(graph or moe) and hierarchical", ctx(moe=True), False),
    ("(graph or moe) and hierarchical", ctx(moe=True, hierarchical=True), True),
    ("not graph and not moe", ctx(), True),
    ("not (graph or moe)", ctx(moe=True), False),
    ("32_768 < seq_len", ctx(40000), True),
    ("seq_len == 5 or seq_len != 5", ctx(7), True),
    ("seq_len <= long_sequence_threshold", ctx(8192), True),
    ("default", ctx(), True),
])
def test_grammar(condition, context, expected):
    assert parse_condition(condition)(context) is expected


@pytest.mark.parametrize("rule, message, column", [
    ("seq_lenn > 5", "unknown name 'seq_lenn' (did you mean 'seq_len'?)", 1),
    ("seq_len >> 5", "expected a number or seq_len", 10),
    ("seq_len > ", "the condition ends", 11),
    ("seq_len 5", "expected a comparison", 9),
    ("(graph or moe", "expected ')'", None),
    ("graph moe", "after a complete condition", 7),
    ("hierarchical > 3", "is a flag", 14),
    ("seq_len > 5 ; rm -rf", "unexpected character ';'", 13),
    ("", "the condition is empty", None),
    ("__import__(os)", "unknown name '__import__'", 1),
    ("__import__('os')", "unexpected character \"'\"", 12),
])
def test_bad_rules_point_at_the_token(rule, message, column):
    with pytest.raises(RuleError) as info:
        MechanismSelector([(rule, "flash-attention-v2")])
    text = str(info.value)
    assert message in text and text.startswith("rule 1")
    if column is not None:
        assert f"column {column}:" in text
        caret_line = text.splitlines()[-1]
        assert caret_line.index("^") - 4 == column - 1       # the caret sits under the token


def test_rule_forms_and_unknown_mechanisms():
    selector = MechanismSelector(["moe -> memory-attention", ("default", "cross-attention")])
    assert selector.select(is_moe=True) == "memory-attention"
    assert selector.select() == "cross-attention"
    with pytest.raises(RuleError, match="did you mean memory-attention"):
        MechanismSelector([("default", "memory-atention")])
    with pytest.raises(RuleError, match="condition -> mechanism"):
        MechanismSelector(["default memory-attention"])
    with pytest.raises(RuleError, match="rules must be a list"):
        MechanismSelector("default -> memory-attention")
    with pytest.raises(RuleError, match="fallback_mechanism"):
        MechanismSelector(fallback_mechanism="nope")
    no_default = MechanismSelector([("moe", "memory-attention")])
    assert no_default.select() == "flash-attention-v2"
    assert no_default.explain().rule == -1
    with pytest.raises(ValueError, match="seq_len"):
        no_default.explain(seq_len=-1)

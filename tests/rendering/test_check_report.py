"""The check's report as people read it."""

from paramdelta.pipeline.check_rules import CheckReport
from paramdelta.rendering.check_report import check_table


def test_the_failed_report_reads_as_a_table_in_an_issue():
    report = CheckReport(device="cpu")
    report.record("tokenizer", True, "TokenizersBackend")
    report.record("chat_template", False, "does not render: TemplateError: no | way")
    report.record("perplexity", False, "merged 900 is over 3 x 10")
    assert check_table(report.to_dict()) == (
        "| check | result | detail |\n"
        "| --- | --- | --- |\n"
        "| tokenizer loads | pass | TokenizersBackend |\n"
        "| chat template renders | **fail** | does not render: TemplateError: no \\| way |\n"
        "| perplexity | **fail** | merged 900 is over 3 x 10 |\n"
    )

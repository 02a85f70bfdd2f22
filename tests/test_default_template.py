"""The prompt a run uses when the user gives none: it must fit any text, not one domain."""

import re

import pytest

from beam_pipeline import demo
from beam_pipeline import options as opts
from beam_pipeline.options import DpSynthOptions
from beam_pipeline.plan import make_plan
from tests.pipeline_fixtures import tiny_args
from transforms.generate import check_template, render_prompt

# Words that would tell the LM the texts are of one kind, whatever the user's data is.
DOMAIN_WORDS = ("review", "yelp", "restaurant", "business", "star", "customer", "product")

TICKET = "I was charged twice for the March invoice, please refund one payment."


def _plan(tmp_path, *extra):
    return make_plan(DpSynthOptions(tiny_args(tmp_path / "tickets.csv", tmp_path / "out",
                                              "--text_column", "body", *extra)))


@pytest.mark.parametrize("template, labelled", [(opts.DEFAULT_TEMPLATE, True),
                                                (opts.DEFAULT_UNLABELLED_TEMPLATE, False)])
def test_the_default_templates_name_no_domain(template, labelled):
    words = re.findall(r"[a-z]+", template.replace("{text}", "").replace("{label}", "").lower())
    assert not [w for w in words if w.startswith(DOMAIN_WORDS)], template
    check_template(template, labelled=labelled)
    # The seed ends in a blank line, where the default --stop_text cuts the model's new text
    # (a model starts a new document there), and the prompt ends where the new text begins.
    assert "{text}\n\n" in template and template.endswith(":\n")


def test_a_ticket_run_without_a_template_prompts_for_another_text_of_its_label(tmp_path):
    labelled = _plan(tmp_path, "--label_column", "product", "--label_values", "billing,login")
    assert labelled.template == opts.DEFAULT_TEMPLATE
    assert render_prompt(labelled.template, TICKET, "billing") == (
        f"Text (billing):\n{TICKET}\n\nAnother text (billing):\n")
    assert _plan(tmp_path).template == "Text:\n{text}\n\nAnother text:\n"


def test_a_domain_template_from_the_shell_and_the_demo_keep_their_own_prompt(tmp_path):
    # As typed in a shell in single quotes: backslash-n, not a newline.
    typed = r"Support ticket ({label}):\n{text}\n\nAnother support ticket ({label}):\n"
    ticket = _plan(tmp_path, "--label_column", "product", "--label_values", "billing,login",
                   "--prompt_template", typed)
    assert render_prompt(ticket.template, TICKET, "billing") == (
        f"Support ticket (billing):\n{TICKET}\n\nAnother support ticket (billing):\n")

    arguments = demo.demo_arguments(input_path=tmp_path / "yelp.csv", output=tmp_path / "demo",
                                    records=40, secret=None)
    assert make_plan(DpSynthOptions(arguments)).template == demo.YELP_TEMPLATE
    assert demo.YELP_TEMPLATE.startswith("Yelp review ({label}):\n")

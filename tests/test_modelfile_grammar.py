"""The Modelfile parser follows Ollama's grammar (docs/ollama.md#modelfile-grammar), one test per rule;
the renderer writes text that grammar reads back exactly."""

from __future__ import annotations

import pytest

from localserve.errors import InputError
from localserve.modelfile import ModelfileSpec, parse_modelfile, render_modelfile

# ---- lexical rules ------------------------------------------------------------------------------


def test_a_bom_is_accepted_and_stripped():
    assert parse_modelfile("\ufeffFROM ./m.gguf\n").from_ == "./m.gguf"


def test_lines_may_be_indented_and_hash_lines_are_comments():
    spec = parse_modelfile("# a comment\n  \tFROM ./m.gguf\n   # indented comment\n\tSYSTEM hi\n")
    assert spec.from_ == "./m.gguf" and spec.system == "hi"


def test_there_are_no_trailing_comments():
    assert parse_modelfile("FROM x\nSYSTEM be brief # really\n").system == "be brief # really"
    with pytest.raises(InputError, match="line 2: parameter temperature needs a number, got '0.7 # hot'"):
        parse_modelfile("FROM x\nPARAMETER temperature 0.7 # hot\n")


def test_command_names_are_case_insensitive():
    spec = parse_modelfile("from ./m.gguf\nSyStEm hello\n")
    assert spec.from_ == "./m.gguf" and spec.system == "hello"


def test_a_command_name_must_be_followed_by_a_space_or_tab():
    assert parse_modelfile("FROM\t./m.gguf\n").from_ == "./m.gguf"
    with pytest.raises(InputError, match='line 2: .*command must be one of "from"'):
        parse_modelfile("FROM x\nSYSTEM\nhello\n")


def test_valid_commands_include_the_newer_ones_and_unknown_ones_are_errors():
    spec = parse_modelfile("FROM x\nRENDERER qwen3\nPARSER qwen3\nREQUIRES 0.14.0\nDRAFT ./d.gguf\n")
    assert (spec.renderer, spec.parser, spec.requires, spec.draft) == ("qwen3", "qwen3", "0.14.0", "./d.gguf")
    with pytest.raises(InputError, match="line 2: unknown command 'PROMPT'; command must be one of"):
        parse_modelfile("FROM x\nPROMPT hi\n")


def test_values_run_to_the_line_end_trimmed_with_inner_spaces_kept():
    assert parse_modelfile("FROM x\nSYSTEM   two  spaces  inside \t\n").system == "two  spaces  inside"


def test_triple_quotes_span_lines_and_keep_double_quotes_verbatim():
    spec = parse_modelfile('FROM x\nSYSTEM """He said "hi".\n  indented line\n"""\n')
    assert spec.system == 'He said "hi".\n  indented line\n'


def test_double_quotes_span_lines_too():
    assert parse_modelfile('FROM x\nSYSTEM "line one\nline two"\n').system == "line one\nline two"


def test_there_are_no_escape_sequences_and_single_quotes_mean_nothing():
    spec = parse_modelfile('FROM x\nSYSTEM "a\\nb \\" c"\nMESSAGE user \'quoted\'\n')
    assert spec.system == 'a\\nb \\" c'
    assert spec.messages == (("user", "'quoted'"),)


def test_an_unclosed_quote_swallows_the_rest_and_fails_at_eof_naming_its_line():
    with pytest.raises(InputError, match="line 2: unexpected EOF"):
        parse_modelfile('FROM x\nSYSTEM "never closed\nPARAMETER temperature 1\n')


def test_text_after_closing_triple_quotes_breaks_the_value():
    with pytest.raises(InputError, match="line 2: unexpected EOF"):
        parse_modelfile('FROM x\nTEMPLATE """{{ .Prompt }}""" trailing\n')


def test_non_printable_characters_are_dropped():
    assert parse_modelfile("FROM x\nSYSTEM a\u00a0b\u200bc\n").system == "abc"


def test_carriage_returns_stay_inside_quoted_multiline_values():
    spec = parse_modelfile('FROM x\r\nSYSTEM """one\r\ntwo"""\r\nPARAMETER num_ctx 64\r\n')
    assert spec.system == "one\r\ntwo"
    assert spec.parameters == {"num_ctx": 64}


def test_from_is_mandatory():
    with pytest.raises(InputError, match="no FROM line"):
        parse_modelfile("SYSTEM hi\n")


# ---- order and repetition ------------------------------------------------------------------------


def test_commands_may_come_in_any_order_and_repeats_follow_ollama():
    text = ("PARAMETER stop <a>\nSYSTEM first\nTEMPLATE t1\nLICENSE MIT\nMESSAGE user hi\nADAPTER ./a1\n"
            "FROM x\nPARAMETER stop <b>\nSYSTEM second\nTEMPLATE t2\nLICENSE Apache\nMESSAGE assistant yo\n"
            "ADAPTER ./a2\n")
    spec = parse_modelfile(text)
    assert spec.parameters["stop"] == ["<a>", "<b>"]
    assert spec.license == ("MIT", "Apache")
    assert spec.messages == (("user", "hi"), ("assistant", "yo"))
    assert (spec.adapter, spec.system, spec.template) == ("./a2", "second", "t2")


# ---- MESSAGE and PARAMETER -----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["User", "tool", "USER"])
def test_message_roles_are_exact_and_case_sensitive(role):
    with pytest.raises(InputError, match='line 2: message role must be one of "system", "user", or "assistant"'):
        parse_modelfile(f"FROM x\nMESSAGE {role} hi\n")


def test_parameter_names_are_case_sensitive_and_checked_against_the_table():
    with pytest.raises(InputError, match="line 2: unknown parameter 'Temperature'"):
        parse_modelfile("FROM x\nPARAMETER Temperature 1\n")
    with pytest.raises(InputError, match="unknown parameter 'top_q'"):
        parse_modelfile("FROM x\nPARAMETER top_q 1\n")


def test_parameter_values_are_typed_as_go_strconv_reads_them():
    spec = parse_modelfile("FROM x\nPARAMETER num_ctx 4096\nPARAMETER temperature 1\nPARAMETER top_p .5\n"
                           "PARAMETER use_mmap F\nPARAMETER seed -3\nPARAMETER stop <|im_end|>\n")
    assert spec.parameters == {"num_ctx": 4096, "temperature": 1.0, "top_p": 0.5, "use_mmap": False,
                               "seed": -3, "stop": ["<|im_end|>"]}
    assert isinstance(spec.parameters["num_ctx"], int) and isinstance(spec.parameters["temperature"], float)
    with pytest.raises(InputError, match="num_ctx needs a base-10 integer, got '4096.0'"):
        parse_modelfile("FROM x\nPARAMETER num_ctx 4096.0\n")
    with pytest.raises(InputError, match="use_mmap needs true or false"):
        parse_modelfile("FROM x\nPARAMETER use_mmap yes\n")


def test_a_single_stop_is_still_a_list():
    assert parse_modelfile("FROM x\nPARAMETER stop </s>\n").parameters["stop"] == ["</s>"]


def test_deprecated_parameters_are_accepted_and_dropped():
    assert parse_modelfile("FROM x\nPARAMETER mirostat 2\nPARAMETER num_ctx 8\n").parameters == {"num_ctx": 8}


def test_requires_needs_a_semantic_version():
    assert parse_modelfile("FROM x\nREQUIRES v0.30.1\n").requires == "0.30.1"
    with pytest.raises(InputError, match="line 2: REQUIRES needs a semantic version"):
        parse_modelfile("FROM x\nREQUIRES latest\n")


def test_errors_name_the_line_after_multiline_values():
    text = 'FROM x\nSYSTEM """a\nb\nc"""\nMESSAGE robot hi\n'
    with pytest.raises(InputError, match="line 5: message role"):
        parse_modelfile(text)


# ---- rendering and the round trip -----------------------------------------------------------------

ROUND_TRIPS = [
    ModelfileSpec(from_="./demo-Q4_K_M.gguf"),
    ModelfileSpec(from_="./m.gguf", system="Line one.\nLine two, with \"quotes\" and 'single' ones.\n",
                  parameters={"stop": ["<|im_end|>", "\n\n", " padded "], "num_ctx": 8192, "temperature": 0.7,
                              "top_p": 0.95, "use_mmap": True, "seed": -1}),
    ModelfileSpec(from_="./m.gguf", template='{{ if .System }}{{ .System }}{{ end }}"{{ .Prompt }}"',
                  system="  leading and trailing spaces  ", messages=(("user", "Grüße 🙂 日本語"),
                                                                     ("assistant", 'multi\n"line"\nanswer'))),
    ModelfileSpec(from_="./with space.gguf", license=("MIT License\n\nCopyright (c) you", 'quote " inside'),
                  adapter="./lora.gguf", requires="0.30.0"),
    ModelfileSpec(from_="./m.gguf", system='ends with a quote"', template='"starts with a quote'),
    ModelfileSpec(from_="./m.gguf", system='has """ inside a line', template=""),
]


@pytest.mark.parametrize("spec", ROUND_TRIPS, ids=range(len(ROUND_TRIPS)))
def test_parse_of_render_gives_back_the_spec(spec):
    text = render_modelfile(spec)
    assert "\r" not in text and text.endswith("\n")
    assert parse_modelfile(text) == spec


def test_render_quotes_only_what_needs_quoting():
    text = render_modelfile(ModelfileSpec(from_="./m.gguf", system="short", parameters={"stop": ["<s>"]},
                                          template="a\nb"))
    assert "SYSTEM short\n" in text and "PARAMETER stop <s>\n" in text and 'TEMPLATE "a\nb"\n' in text


def test_text_the_grammar_cannot_hold_is_refused_with_what_to_do():
    with pytest.raises(InputError, match="cannot be written in a Modelfile.*HTTP API"):
        render_modelfile(ModelfileSpec(from_="x", template='line one """\nline two'))


@pytest.mark.parametrize("text,match", [("a\r\nb", "carriage return"), ("zero\u200bwidth", "U\\+200B")])
def test_characters_ollama_would_change_are_refused(text, match):
    with pytest.raises(InputError, match=match):
        render_modelfile(ModelfileSpec(from_="x", system=text))


@pytest.mark.parametrize("params,match", [
    ({"stop": "<s>"}, "must be a list of strings"),
    ({"num_ctx": 4096.0}, "must be an integer"),
    ({"num_ctx": True}, "must be an integer"),
    ({"temperature": "hot"}, "must be a number"),
    ({"use_mmap": 1}, "must be true or false"),
    ({"Temperature": 1.0}, "unknown Ollama parameter 'Temperature'"),
    ({"mirostat": 1}, "deprecated"),
])
def test_render_checks_parameter_names_and_types(params, match):
    with pytest.raises(InputError, match=match):
        render_modelfile(ModelfileSpec(from_="x", parameters=params))


def test_errors_can_name_the_file_and_a_partial_modelfile_can_be_read_for_merging():
    with pytest.raises(InputError, match="^my/Modelfile line 2: unknown parameter"):
        parse_modelfile("FROM x\nPARAMETER nope 1\n", source="my/Modelfile")
    partial = parse_modelfile("SYSTEM be kind\nPARAMETER stop END\n", require_from=False)
    assert partial.from_ == "" and partial.system == "be kind" and partial.parameters == {"stop": ["END"]}

"""The Ollama front passes a request's options on to llama.cpp under the names llama.cpp reads."""

from __future__ import annotations

from devnode.ollama_front import chat_request, generate_request, openai_options
from nodeclient import OLLAMA_TO_OPENAI_OPTIONS


def test_every_option_of_the_platforms_table_reaches_llama_cpp_under_its_openai_name() -> None:
    options = {ollama: index + 1 for index, ollama in enumerate(OLLAMA_TO_OPENAI_OPTIONS)}
    assert openai_options(options) == {openai: options[ollama] for ollama, openai in OLLAMA_TO_OPENAI_OPTIONS.items()}


def test_llama_cpps_own_sampling_options_pass_and_unknown_or_empty_ones_are_dropped() -> None:
    assert openai_options({"min_p": 0.1, "repeat_penalty": 1.1, "mirostat": 2, "seed": None}) == {
        "min_p": 0.1, "repeat_penalty": 1.1}


def test_a_negative_num_predict_means_no_limit() -> None:
    assert openai_options({"num_predict": -1, "temperature": 0}) == {"temperature": 0}
    assert openai_options({"num_predict": -2}) == {}


def test_chat_and_generate_carry_the_options_beside_the_messages() -> None:
    path, payload = chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                  "options": {"num_predict": 4}})
    assert (path, payload["max_tokens"], payload["messages"]) == (
        "/v1/chat/completions", 4, [{"role": "user", "content": "hi"}])
    path, payload = generate_request({"model": "m", "prompt": "hi", "raw": True, "options": {"top_k": 3}})
    assert (path, payload) == ("/v1/completions", {"model": "m", "prompt": "hi", "top_k": 3})

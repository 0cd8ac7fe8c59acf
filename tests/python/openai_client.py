#!/usr/bin/env python3
"""Drive a Shoal node's API with the official OpenAI Python client.

Usage: openai_client.py BASE_URL API_KEY   (e.g. http://127.0.0.1:8080/v1 TOKEN)

Checks that a wrong key raises openai.AuthenticationError, then chat and text completions,
streamed and not, their log-probabilities, and that an over-long request raises openai.BadRequestError. Exits
non-zero on the first mismatch.
"""
import sys

import openai


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)


def main():
    intruder = openai.OpenAI(base_url=sys.argv[1], api_key="not-the-key-at-all", max_retries=0)
    try:
        intruder.models.list()
        check(False, "a wrong API key was accepted")
    except openai.AuthenticationError:
        pass

    client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)

    models = client.models.list()
    check(len(models.data) == 1, f"one model, got {models.data}")
    name = models.data[0].id

    chat = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "The capital of France is"}],
        max_tokens=16,
        temperature=0,
    )
    check(chat.id.startswith("chatcmpl-"), f"chat id {chat.id}")
    check(chat.model == name, f"model {chat.model} != {name}")
    answer = chat.choices[0].message.content
    check(chat.choices[0].message.role == "assistant", "assistant role")
    check(len(answer) > 0, "chat answer is empty")
    check(chat.choices[0].finish_reason in ("stop", "length"), chat.choices[0].finish_reason)
    check(chat.usage.completion_tokens <= 16, f"usage {chat.usage}")
    check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens,
          f"usage {chat.usage}")

    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "The capital of France is"}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
            finish = choice.finish_reason or finish
    check("".join(parts) == answer, f"streamed chat {''.join(parts)!r} != {answer!r}")
    check(finish == chat.choices[0].finish_reason, f"streamed finish {finish}")
    check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens,
          f"streamed usage {usage}")

    completion = client.completions.create(
        model=name, prompt="1, 2, 3, 4, 5,", max_tokens=10, temperature=0
    )
    text = completion.choices[0].text
    check(text.startswith(" 6, 7, 8"), f"completion {text!r}")
    check(completion.choices[0].finish_reason == "length", completion.choices[0].finish_reason)
    check(completion.usage.completion_tokens == 10, f"usage {completion.usage}")

    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=name, prompt="1, 2, 3, 4, 5,", max_tokens=10, temperature=0, stream=True
        )
        if c.choices
    )
    check(streamed == text, f"streamed completion {streamed!r} != {text!r}")

    stopped = client.completions.create(
        model=name, prompt="1, 2, 3, 4, 5,", max_tokens=10, temperature=0, stop=[" 8"]
    )
    check(stopped.choices[0].text == " 6, 7,", f"stopped {stopped.choices[0].text!r}")
    check(stopped.choices[0].finish_reason == "stop", stopped.choices[0].finish_reason)

    scored = client.chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": "The capital of France is"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = scored.choices[0].logprobs.content
    check(len(content) == scored.usage.completion_tokens, f"{len(content)} logprobs")
    check(all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content), f"{content}")
    check(all(t.token == t.top_logprobs[0].token for t in content), "greedy picks the top token")
    check(bytes(b for t in content for b in t.bytes).decode() == scored.choices[0].message.content,
          "the tokens' bytes spell the answer")
    streamed_lp = [
        t
        for c in client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "The capital of France is"}],
            max_tokens=6,
            temperature=0,
            logprobs=True,
            top_logprobs=2,
            stream=True,
        )
        for choice in c.choices
        if choice.logprobs and choice.logprobs.content
        for t in choice.logprobs.content
    ]
    check([t.token for t in streamed_lp] == [t.token for t in content], "streamed logprobs")
    legacy = client.completions.create(
        model=name, prompt="1, 2, 3, 4, 5,", max_tokens=4, temperature=0, logprobs=1
    )
    lp = legacy.choices[0].logprobs
    check("".join(lp.tokens) == legacy.choices[0].text, f"tokens {lp.tokens}")
    check(len(lp.token_logprobs) == 4 and len(lp.top_logprobs) == 4, f"{lp}")

    try:
        client.completions.create(model=name, prompt="word " * 4000, max_tokens=10)
        check(False, "an over-long prompt was accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"status {e.status_code}")
        check("context" in str(e), f"message {e}")

    print("ok")


if __name__ == "__main__":
    main()

import base64

from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")  # the key only if the server has keys
with open("tests/fixtures/tiny-openflamingo/images/checker.png", "rb") as f:
    image_url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
messages = [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": image_url}},
    {"type": "text", "text": "Output:"},
]}]

reply = client.chat.completions.create(model="openflamingo-9b", messages=messages, max_tokens=10)
print(repr(reply.choices[0].message.content), reply.choices[0].finish_reason)

stream = client.chat.completions.create(model="openflamingo-9b", messages=messages, max_tokens=10, stream=True)
print(repr("".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)))

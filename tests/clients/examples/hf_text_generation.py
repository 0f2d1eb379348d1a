import base64

from huggingface_hub import InferenceClient

client = InferenceClient(base_url="http://127.0.0.1:8080")  # posts to TGI's route, POST /
with open("tests/fixtures/tiny-openflamingo/images/checker.png", "rb") as f:
    prompt = f"![](data:image/png;base64,{base64.b64encode(f.read()).decode()})Output:"  # TGI inline image

print(repr(client.text_generation(prompt, max_new_tokens=10)))
print(repr("".join(client.text_generation(prompt, max_new_tokens=10, stream=True))))
out = client.text_generation(prompt, max_new_tokens=10, details=True)
print(out.details.finish_reason, out.details.generated_tokens, [t.id for t in out.details.tokens])

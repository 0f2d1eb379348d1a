IMG=$(base64 -w0 tests/fixtures/tiny-openflamingo/images/checker.png)
# TGI /generate: the whole answer as one JSON object
curl -s -w '\n' 127.0.0.1:8080/generate -H 'content-type: application/json' \
  -d "{\"inputs\": \"<image>Output:\", \"images\": [\"$IMG\"], \"parameters\": {\"max_new_tokens\": 10}}"
# TGI's compat route: POST / with "stream": true answers token by token (server-sent events)
curl -sN 127.0.0.1:8080/ -H 'content-type: application/json' \
  -d "{\"inputs\": \"<image>Output:\", \"images\": [\"$IMG\"], \"parameters\": {\"max_new_tokens\": 10}, \"stream\": true}"
# OpenAI chat completions with the image as a data URL
curl -s -w '\n' 127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \
  -d "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,$IMG\"}}, {\"type\": \"text\", \"text\": \"Output:\"}]}], \"max_tokens\": 10}"

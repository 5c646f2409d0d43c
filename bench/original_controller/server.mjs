// The baseline of bench/admission.py: a POST /run that does per admission what the original platform's Node
// controller did, and nothing more. One shared key, no database and no job record: the body is parsed, the job is
// given an id and sent to the SQS queue as one SendMessage (the AWS SDK for JavaScript v3, as a Node service uses
// it), and the answer is 202 with the id. It is not the original's code, which is not available here; it is the
// least that an admission on SQS can do, in the original's language, measured in the same run as ours.
//
//     node server.mjs PORT QUEUE_URL KEY      (the SDK reads AWS_ENDPOINT_URL_SQS, AWS_REGION and the credentials)
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { SendMessageCommand, SQSClient } from "@aws-sdk/client-sqs";

const [port, queueUrl, key] = process.argv.slice(2);
const sqs = new SQSClient({});

function answer(response, status, body) {
  const text = JSON.stringify(body);
  response.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  response.end(text);
}

async function run(request, response) {
  if (request.headers.authorization !== `Bearer ${key}`) return answer(response, 401, { error: "unauthorized" });
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  let body;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    return answer(response, 400, { error: "invalid JSON" });
  }
  if (typeof body?.functionId !== "string") return answer(response, 400, { error: "functionId is required" });
  const jobId = randomUUID();
  const message = { jobId, functionId: body.functionId, modelId: body.modelId, inputData: body.inputData };
  await sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: JSON.stringify(message) }));
  answer(response, 202, { status: "ACCEPTED", jobId });
}

createServer((request, response) => {
  if (request.method === "GET" && request.url === "/healthz") return answer(response, 200, { status: "ok" });
  if (request.method !== "POST" || request.url !== "/run") return answer(response, 404, { error: "not found" });
  run(request, response).catch((error) => answer(response, 503, { error: String(error) }));
}).listen(Number(port), "127.0.0.1");

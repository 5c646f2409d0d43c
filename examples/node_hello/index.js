// A Node function: the handler gets the job's input and context, asks the job's model twice (a streamed generate
// and a chat) through the injected ai_client, and returns the answers with the metered usage. It brings one small
// npm package (is-number, in package.json and package-lock.json), installed once into a read-only layer at deploy.
// Deploy the folder: `ainode deploy examples/node_hello` (index.js makes it a node function; it waits for the
// layer), then `ainode run node_hello --input '{"topic": "the sea", "lines": 3}'`.
const ai = require("ai_client");
const isNumber = require("is-number");

const OPTIONS = {temperature: 0, seed: 42, max_tokens: 30};

exports.handler = async (event, context) => {
  const topic = (event && event.topic) || "the sea";
  const lines = event && isNumber(event.lines) ? Number(event.lines) : 2;
  const pieces = [];
  for await (const piece of ai.generate(`A short poem of ${lines} lines about ${topic}:\n`,
                                        {...OPTIONS, stream: true})) {
    pieces.push(piece);
  }
  const colour = await ai.chat([{role: "user", content: `In a few words, what colour is ${topic}?`}], OPTIONS);
  console.log(`job ${context.jobId} used model ${context.modelId}`);
  return {poem: pieces.join("").trim(), colour: colour.trim(), usage: await ai.usage()};
};

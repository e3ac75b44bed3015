// node-hl7-client (npm, 3.2.0) as an interface engine sending to medrelay's MLLP listener.
//
//   node node_hl7_send.js FILE PORT [CA CERT KEY]
//
// Sends every message of FILE (CR-separated segments, a message per MSH, as samples/hl7/*.hl7) on
// one connection, one at a time, each after the previous ACK; with CA/CERT/KEY over TLS (server
// checked for "localhost", client certificate for mutual TLS). Prints a JSON array of
// {control, msa} per ACK, in the order received. Used by tests/interop_hl7.rs (.ci/interop).
const fs = require("fs");
const { Client, Message } = require("node-hl7-client");

const [file, port, ca, cert, key] = process.argv.slice(2);
const messages = [];
let current = [];
for (const line of fs.readFileSync(file, "utf8").replace(/\r\n/g, "\n").replace(/\n/g, "\r").split("\r")) {
  if (!line.trim()) continue;
  if (line.startsWith("MSH") && current.length) {
    messages.push(current.join("\r"));
    current = [];
  }
  current.push(line);
}
if (current.length) messages.push(current.join("\r"));

const tls = ca
  ? { ca: fs.readFileSync(ca), cert: fs.readFileSync(cert), key: fs.readFileSync(key), servername: "localhost" }
  : undefined;
const client = new Client({ host: "127.0.0.1", tls, maxConnectionAttempts: 3 });
const answers = [];
let next = 0;
const finish = (code) => {
  console.log(JSON.stringify(answers));
  client.closeAll();
  process.exit(code);
};
const conn = client.createConnection({ port: Number(port), maxConnections: 1 }, async (res) => {
  const m = res.getMessage();
  answers.push({ msa: m.get("MSA.1").toString(), control: m.get("MSA.2").toString() });
  if (answers.length === messages.length) finish(0);
  else send();
});
const send = () => conn.sendMessage(new Message({ text: messages[next++] }));
conn.on("connect", () => {
  if (next === 0) send();
});
setTimeout(() => finish(1), 20000);

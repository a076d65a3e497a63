// Validates an AsyncAPI document with the reference parser (@asyncapi/parser, Avro payloads
// through @asyncapi/avro-schema-parser), both installed by scripts/registry.sh asyncapi.
// Usage: node validate.cjs FILE   (NODE_PATH = the install's node_modules)
// Prints the error diagnostics as JSON; exit 0 when there is none, 1 otherwise.
const fs = require('fs');
const { Parser } = require('@asyncapi/parser');
const { AvroSchemaParser } = require('@asyncapi/avro-schema-parser');

(async () => {
  const parser = new Parser();
  parser.registerSchemaParser(AvroSchemaParser());
  const text = fs.readFileSync(process.argv[2], 'utf8');
  const { document, diagnostics } = await parser.parse(text);
  const errors = diagnostics.filter((d) => d.severity === 0)
    .map((d) => ({ code: d.code, message: d.message, path: d.path }));
  console.log(JSON.stringify({ valid: document !== undefined && errors.length === 0, errors,
    channels: document ? document.channels().all().map((c) => c.address()) : [] }));
  process.exit(document !== undefined && errors.length === 0 ? 0 : 1);
})().catch((e) => { console.error(e); process.exit(2); });

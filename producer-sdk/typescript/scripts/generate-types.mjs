// Generates src/generated/*.ts, the wire types, from the contract's JSON Schemas
// (schemas/json/ at the repository root). `npm run generate` writes them; `--check` (run by
// the tests) fails when the committed files differ from what the schemas give.
import { compile } from 'json-schema-to-typescript';
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const schemas = path.resolve(here, '../../../schemas/json');
const out = path.resolve(here, '../src/generated');
const messages = [
  ['job.v1', 'JobV1'],
  ['result.v1', 'ResultV1'],
  ['chunk.v1', 'ChunkV1'],
  ['control.v1', 'ControlV1'],
  ['control-reply.v1', 'ControlReplyV1'],
];

export async function generate() {
  const files = {};
  for (const [name, title] of messages) {
    const schema = JSON.parse(await readFile(path.join(schemas, `${name}.schema.json`), 'utf8'));
    schema.title = title;
    const banner = `// Generated from schemas/json/${name}.schema.json by scripts/generate-types.mjs: do not edit.`;
    files[`${name}.ts`] = await compile(schema, title, {
      bannerComment: banner,
      additionalProperties: false,
      style: { singleQuote: true, printWidth: 100 },
      unknownAny: true,
    });
  }
  // The job schema itself, for checking a job before it is published.
  const job = JSON.parse(await readFile(path.join(schemas, 'job.v1.schema.json'), 'utf8'));
  files['job-schema.ts'] =
    '// Generated from schemas/json/job.v1.schema.json by scripts/generate-types.mjs: do not edit.\n\n' +
    `export const JOB_V1_SCHEMA = ${JSON.stringify(job, null, 2)} as const;\n`;
  return files;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const files = await generate();
  const check = process.argv.includes('--check');
  let stale = [];
  for (const [name, text] of Object.entries(files)) {
    const target = path.join(out, name);
    if (check) {
      const current = await readFile(target, 'utf8').catch(() => '');
      if (current !== text) stale.push(name);
    } else {
      await writeFile(target, text);
    }
  }
  if (stale.length > 0) {
    console.error(
      `src/generated is not in step with schemas/json: ${stale.join(', ')}; run npm run generate`,
    );
    process.exit(1);
  }
}

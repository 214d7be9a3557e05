// A plugin that turns receipts into expense records through Quarry: one from text, one from an
// image, then a batch with progress. Copy it; it needs only @quarry/producer.
//
//   QUARRY_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f npm start
//
// Environment: QUARRY_AMQP_URL (its user is your plugin), QUARRY_NAMESPACE (default quarry),
// QUARRY_WORKER_USER (the fleet workers' AMQP user, default guest).

import { QuarryClient, QuarryError, type BatchJob } from '@quarry/producer';

/** The expense record every receipt becomes. */
const EXPENSE = {
  type: 'object',
  required: ['merchant', 'total', 'currency'],
  additionalProperties: false,
  properties: {
    merchant: { type: 'string' },
    total: { type: 'number' },
    currency: { type: 'string', minLength: 3, maxLength: 3 },
  },
} as const;

interface Expense {
  merchant: string;
  total: number;
  currency: string;
}

// A 1×1 PNG standing in for a photographed receipt.
const PHOTO = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==',
  'base64',
);

const client = await QuarryClient.connect(
  process.env.QUARRY_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/%2f',
  {
    namespace: process.env.QUARRY_NAMESPACE ?? 'quarry',
    workerUser: process.env.QUARRY_WORKER_USER ?? 'guest',
  },
);

try {
  // 1. From text.
  const fromText = await client.llm.completeStructured<typeof EXPENSE, Expense>({
    instructions: 'Extract the expense record.',
    input: [{ type: 'text', text: 'Cafe Luna\n2 x espresso 2.80\nTOTAL 5.60 EUR' }],
    jsonSchema: EXPENSE,
    schemaName: 'receipt',
    purpose: 'expense-import',
  });
  console.log(
    `text:  ${JSON.stringify(fromText.parsed)} (${fromText.model}, ${fromText.usage.totalTokens} tokens)`,
  );

  // 2. From an image.
  const fromImage = await client.llm.completeStructured<typeof EXPENSE, Expense>({
    instructions: 'Extract the expense record from the photographed receipt.',
    input: [{ type: 'image', buffer: PHOTO, mime: 'image/png', fileName: 'receipt.png' }],
    jsonSchema: EXPENSE,
    schemaName: 'receipt',
  });
  console.log(`image: ${JSON.stringify(fromImage.parsed)}`);

  // 3. A batch of 50, with progress; each result acknowledged once stored.
  const jobs: BatchJob[] = Array.from({ length: 50 }, (_, i) => ({
    customId: `receipt-${i}`,
    instructions: 'Extract the expense record.',
    input: [{ type: 'text', text: `Shop ${i}\nTOTAL ${(i + 1).toFixed(2)} EUR` }],
    jsonSchema: EXPENSE,
    schemaName: 'receipt',
  }));
  const stored = new Map<string, Expense>();
  const batch = client.batch(`receipts-${Date.now()}`, {
    onProgress: (p) => {
      if (p.received % 10 === 0 && p.received > 0)
        console.log(`batch: ${p.received}/${jobs.length}`);
    },
  });
  let failed = 0;
  for await (const item of batch.submit(jobs)) {
    if (item.error) failed++;
    else stored.set(item.customId, item.result!.parsed as Expense);
    item.ack();
  }
  await batch.finish();
  const status = await batch.status();
  console.log(
    `batch: ${stored.size} stored, ${failed} failed; the fleet counts ${JSON.stringify(status.counts)}`,
  );
} catch (error) {
  if (error instanceof QuarryError) {
    console.error(`quarry: ${error.code} (${error.source}): ${error.message}`);
    process.exitCode = 1;
  } else {
    throw error;
  }
} finally {
  await client.close();
}

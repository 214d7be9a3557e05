// Receipt jobs for batch tests.

import type { BatchJob } from '../src/index.js';

export const RECEIPT_SCHEMA = {
  type: 'object',
  required: ['merchant', 'total', 'currency'],
  properties: {
    merchant: { type: 'string' },
    total: { type: 'number' },
    currency: { type: 'string', minLength: 3, maxLength: 3 },
  },
  additionalProperties: false,
};

export function* batchJobs(n: number): Generator<BatchJob> {
  for (let i = 0; i < n; i++) {
    yield {
      customId: `receipt-${String(i).padStart(5, '0')}`,
      instructions: 'Extract the expense record.',
      input: [{ type: 'text', text: `Cafe Luna\n${i} x espresso 2.80\nTOTAL 5.60 EUR` }],
      jsonSchema: RECEIPT_SCHEMA,
      schemaName: 'receipt',
    };
  }
}

-- Checks per supplier per bucket, beside the calls and answers already counted there, so the
-- operator console can show checks per minute (a check is one credential's whole check,
-- retries included; `calls` counts every attempt). Old rows read 0.
ALTER TABLE im1_supplier_counts ADD COLUMN checks bigint NOT NULL DEFAULT 0;

COMMENT ON COLUMN im1_supplier_counts.checks IS
    'Checks finished with an outcome (the same ones im1_checks_total counts), summed over all processes.';

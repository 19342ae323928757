-- Priority checks: an RP asks for a credential to be checked now (during a login). The
-- request is a timestamp; the claim for priority work reads only the partial index below,
-- and the write-back clears the request when the check's verdict (or skip) is written.

ALTER TABLE im1_credentials
    ADD COLUMN priority_requested_at timestamptz;

COMMENT ON COLUMN im1_credentials.priority_requested_at IS
    'When an RP asked for a check now; NULL when none is pending. Cleared by the write-back.';

CREATE INDEX im1_credentials_priority_idx
    ON im1_credentials (priority_requested_at)
    WHERE priority_requested_at IS NOT NULL;

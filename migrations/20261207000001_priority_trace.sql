-- Traces: the W3C traceparent of the RP API request that asked for a priority check, so the
-- check's span, in whichever process makes it, links back to that request. Only trace and
-- span ids (random, per request) and the sampled flag: nothing about the user. NULL when
-- tracing is off, the request was not sampled, or no request is pending; cleared with
-- priority_requested_at by the write-back.

ALTER TABLE im1_credentials
    ADD COLUMN priority_trace_parent text;

COMMENT ON COLUMN im1_credentials.priority_trace_parent IS
    'traceparent of the API request that asked for the pending priority check (tracing only); cleared by the write-back.';

"""Many machines: pull-mode agents on Redis Streams, outputs to object storage.

    sdbatch submit JOB --queue redis://HOST:6379/0 --out s3://bucket/prefix   (submit.py)
    sdbatch agent --queue redis://... --backend http://127.0.0.1:7861       (agent.py)
    sdbatch status --queue redis://...                                      (status.py)
    sdbatch collect --queue redis://... --out DIR                           (collect.py)

    submitter --variants--> Redis streams (one per job x checkpoint, consumer group "agents")
    agent     --lease--> generate (local client, checks, retry policy) --> store: images, record
              --ack (only after the record is written)--> Redis
    collector <--records + images-- store  --> OUT/ exactly as `sdbatch run` writes it

Modules: ``urls`` (queue/store URLs, credentials), ``keys`` (Redis key names), ``wire`` (JSON
forms of variants, jobs, records), ``redisq`` (the queue: leases, acks, hand-backs, dead letter,
with the Lua in ``scripts``), ``objstore`` (S3 via boto3, or a shared folder), ``affinity``
(which stream a backend reads next), ``served`` (an agent's backends and the jobs it serves),
``local`` (what the fleet takes from the single-machine run).
The single-machine run does not import any of this: no Redis, no boto3 there.
"""

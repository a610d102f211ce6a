"""The rank machinery: long-lived rank pools, spawned and launched ranks, one case's run inside a rank."""

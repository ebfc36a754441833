"""Running the box as a service: sd_notify, reload on SIGHUP, metrics and $SYS, logs and audit."""

discard;
if header :is "x-alert-level" "high" { keep; }

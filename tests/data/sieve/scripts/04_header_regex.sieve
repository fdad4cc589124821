require ["fileinto", "regex"];
if header :regex "subject" "^(Re|Fwd): " { fileinto "Work"; }
elsif header :regex "message-id" "@[a-z]+\\.zzz\\.org>$" { fileinto "Misc"; }

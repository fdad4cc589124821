if header :contains "subject" "Invoice" { redirect "accounts@example.test"; keep; }

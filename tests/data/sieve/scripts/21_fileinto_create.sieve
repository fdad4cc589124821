require ["fileinto", "mailbox"];
if exists "date" { fileinto :create "Created"; }

require "fileinto";
if anyof (header :contains "subject" "sale", exists "list-id", header :is "precedence" "bulk") { fileinto "Spam"; }
